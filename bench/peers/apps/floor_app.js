// No queue: the drain's task body alone, as fast as one Node process can run it: the
// ceiling for BullMQ's row (the same ioredis client, shared as bullmq_app.js shares it,
// and 50 concurrent bodies, BullMQ's concurrency there).
//   node floor_app.js enqueue N   records N (nothing is queued)
//   node floor_app.js worker      N INCRs from 50 async loops, then idles until stopped
const path = require('path');
module.paths.unshift(path.join(__dirname, '..', '.peers-node', 'node_modules'));
const IORedis = require('ioredis');

const url = new URL(process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6390/0');
const connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
const [cmd, a] = process.argv.slice(2);
const TARGET = 'bench:floor:n';

async function main() {
  const r = new IORedis(connection);
  if (cmd === 'enqueue') {
    const t = performance.now();
    await r.set(TARGET, Number(a));
    const s = (performance.now() - t) / 1000;
    console.log(JSON.stringify({ n: Number(a), secs: s, rate: Number(a) / s, api: 'none: nothing queued' }));
    await r.quit();
    return;
  }
  const stop = async () => { await r.quit(); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  let left = Number(await r.get(TARGET)) || 0;
  const one = async () => {
    while (left > 0) {
      left -= 1;
      await r.incr('bench:done');
    }
  };
  await Promise.all(Array.from({ length: Number(process.env.FLOOR_CONCURRENCY || 50) }, one));
  setInterval(() => {}, 1 << 30);
}
main();
