// The dashboard's only script: keeps the token for the tab, confirms purges, refreshes
// the numbers of a queue page from its JSON endpoint every 5 s.
(function(){
  var KEY='kubeq-dashboard-token';
  document.querySelectorAll('input[name=token]').forEach(function(i){
    var t=sessionStorage.getItem(KEY); if(t){i.value=t;}
  });
  document.querySelectorAll('form.action').forEach(function(f){
    f.addEventListener('submit',function(ev){
      var b=f.querySelector('button.danger');
      if(b && !window.confirm(b.textContent+'?')){ev.preventDefault();return;}
      var i=f.querySelector('input[name=token]'); if(i&&i.value){sessionStorage.setItem(KEY,i.value);}
    });
  });
  var api=document.body.getAttribute('data-refresh');
  if(!api){return;}
  function pick(obj,path){return path.split('.').reduce(function(o,k){return o==null?o:o[k];},obj);}
  setInterval(function(){
    fetch(api,{credentials:'same-origin'}).then(function(r){return r.json();}).then(function(s){
      document.querySelectorAll('[data-stat]').forEach(function(el){
        var v=pick(s,el.getAttribute('data-stat')); if(v!==undefined&&v!==null){el.textContent=String(v);}
      });
    }).catch(function(){});
  },5000);
})();
