// The draft page while a question is typed: after a pause in typing, the same GET the form
// would send, and the page's #matches section replaced by the answer's.  Without this script
// the form still works (the button).  Nothing is saved: the page only reads.
(function () {
  "use strict";
  var form = document.getElementById("draft");
  var matches = document.getElementById("matches");
  if (!form || !matches || !window.fetch || !window.DOMParser) return;
  var timer = null;
  var sent = 0;
  function check() {
    var query = new URLSearchParams(new FormData(form)).toString();
    var mine = ++sent;
    matches.setAttribute("aria-busy", "true");
    fetch("/draft?" + query, { headers: { "Accept": "text/html" }, credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        if (mine !== sent) return; // a later check was sent: its answer wins
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("matches");
        if (fresh) matches.replaceWith(fresh);
        matches = fresh || matches;
        matches.removeAttribute("aria-busy");
        history.replaceState(null, "", "/draft?" + query);
      })
      .catch(function () {
        if (mine === sent) matches.removeAttribute("aria-busy");
      });
  }
  form.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(check, 400);
  });
})();
