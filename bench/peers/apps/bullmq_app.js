// BullMQ: node bullmq_app.js worker CONCURRENCY | enqueue N [bulk] | produce RATE SECS
// Modules come from the bench-only folder ../.peers-node (setup.sh).
const path = require('path');
module.paths.unshift(path.join(__dirname, '..', '.peers-node', 'node_modules'));
const { Queue, Worker } = require('bullmq');
const IORedis = require('ioredis');

const url = new URL(process.env.BENCH_REDIS_URL || 'redis://127.0.0.1:6390/0');
const connection = { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: null };
const [cmd, a, b] = process.argv.slice(2);
const report = (o) => console.log(JSON.stringify(o));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const secs = () => performance.now() / 1000;

async function main() {
  if (cmd === 'worker') {
    const r = new IORedis(connection);
    const w = new Worker('bench', async (job) => {
      const ts = job.data.ts;  // seconds since the epoch, as the Python producers send it
      if (ts == null) await r.incr('bench:done');
      // sub-millisecond epoch time, like Python's time.time()
      else await r.rpush('bench:lat', performance.timeOrigin + performance.now() - ts * 1000);
    }, { connection, concurrency: Number(a || 50) });
    const stop = async () => { await w.close(); process.exit(0); };
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
    return;
  }
  const q = new Queue('bench', { connection });
  if (cmd === 'enqueue') {
    const n = Number(a), t = secs();
    if (b === 'bulk') {
      for (let i = 0; i < n; i += 1000)
        await q.addBulk(Array.from({ length: Math.min(1000, n - i) }, () => ({ name: 'noop', data: {} })));
    } else {
      for (let i = 0; i < n; i++) await q.add('noop', {});
    }
    const s = secs() - t;
    report({ n, secs: s, rate: n / s, api: b === 'bulk' ? 'addBulk, chunks of 1000' : 'add' });
  } else {
    const rate = Number(a), n = Math.floor(rate * Number(b)), t0 = secs();
    for (let i = 0; i < n; i++) {
      const wait = t0 + i / rate - secs();
      if (wait > 0) await sleep(wait * 1000);
      await q.add('noop', { ts: (performance.timeOrigin + performance.now()) / 1000 });
    }
    report({ sent: n, secs: secs() - t0 });
  }
  await q.close();
}
main();
