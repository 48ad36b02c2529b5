// keyledger console: a little progressive enhancement over plain forms.
// Nothing here touches the token: the session lives in an HttpOnly cookie.
(function () {
  "use strict";


  // Modals are native <dialog>s: showModal traps focus, Esc closes.
  var opener = null;
  function openDialog(id, trigger) {
    var d = document.getElementById(id);
    if (!d) return;
    opener = trigger || null;
    var holder = trigger && trigger.closest("[data-key-name]");
    var form = d.querySelector("form");
    if (trigger && trigger.dataset.action && form) form.action = trigger.dataset.action;
    d.querySelectorAll("[data-fill=name]").forEach(function (el) { el.textContent = holder ? "“" + holder.dataset.keyName + "”" : ""; });
    d.showModal();
    var first = d.querySelector("input:not([type=hidden]):not([type=radio]), textarea, select");
    if (first) first.focus();
  }
  document.addEventListener("click", function (e) {
    var t = e.target.closest("[data-open]");
    if (t) { e.preventDefault(); openDialog(t.dataset.open, t); return; }
    var c = e.target.closest("[data-close]");
    if (c) { var d = c.closest("dialog"); if (d) d.close(); return; }
    var p = e.target.closest("[data-post]");
    if (p) {
      var f = document.getElementById("post-form");
      f.action = p.dataset.post;
      f.submit();
      return;
    }
    var cp = e.target.closest("[data-copy]");
    if (cp) {
      var input = document.getElementById(cp.dataset.copy);
      var status = document.getElementById("copy-status");
      input.select();
      var done = function () { if (status) status.textContent = "Copied to the clipboard."; };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(input.value).then(done, function () { document.execCommand("copy"); done(); });
      } else { document.execCommand("copy"); done(); }
    }
  });
  document.querySelectorAll("dialog").forEach(function (d) {
    d.addEventListener("close", function () { if (opener) opener.focus(); });
  });
  document.querySelectorAll("[data-autoopen]").forEach(function (b) { openDialog(b.dataset.open, b); });

  // Radio buttons that show one sub-form each.
  document.querySelectorAll("input[type=radio][data-toggle]").forEach(function (r) {
    r.addEventListener("change", function () {
      r.form.querySelectorAll("input[type=radio][name=" + r.name + "]").forEach(function (o) {
        if (o.dataset.toggle) document.getElementById(o.dataset.toggle).hidden = !o.checked;
      });
    });
  });

  // Selection in the key grid drives "Search in logs".
  var grid = document.getElementById("grid-form");
  if (grid) {
    var sync = function () {
      var any = grid.querySelector("tbody input[name=key_id]:checked");
      grid.querySelectorAll("[data-needs-selection]").forEach(function (b) { b.disabled = !any; });
    };
    grid.addEventListener("change", function (e) {
      if (e.target.matches("[data-select-all]")) {
        grid.querySelectorAll("tbody input[name=key_id]").forEach(function (c) { c.checked = e.target.checked; });
      }
      sync();
    });
    sync();
  }

  // The filter applies as soon as a selector changes.
  document.querySelectorAll("#filter-status, #filter-size").forEach(function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });

  // "I have copied it" enables "Done".
  document.querySelectorAll("[data-enables]").forEach(function (c) {
    c.addEventListener("change", function () {
      var b = document.getElementById(c.dataset.enables);
      b.classList.toggle("disabled", !c.checked);
      b.setAttribute("aria-disabled", String(!c.checked));
    });
  });

  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (e) { if (!window.confirm(f.dataset.confirm)) e.preventDefault(); });
  });

  // Live alerts: new rows on the alerts page, and the badge for critical ones.
  var live = document.getElementById("live-state");
  if (live && window.EventSource) {
    var es = new EventSource(live.dataset.stream);
    es.onopen = function () { live.textContent = "Live"; live.classList.add("on"); };
    es.onerror = function () { live.textContent = "Live feed reconnecting…"; live.classList.remove("on"); };
    es.addEventListener("alert", function (m) {
      var a; try { a = JSON.parse(m.data); } catch (err) { return; }
      var body = document.getElementById("alert-rows");
      var none = body.querySelector("tr.none"); if (none) none.remove();
      var tr = document.createElement("tr");
      tr.className = "new";
      [new Date(a.time).toISOString().replace("T", " ").slice(0, 23), a.severity, a.rule, a.summary, (a.key_ids || []).join(" "), (a.source_ips || []).join(", ")]
        .forEach(function (v, i) {
          var td = document.createElement("td");
          if (i === 1) { var s = document.createElement("span"); s.className = "sev " + v; s.textContent = v; td.appendChild(s); }
          else td.textContent = v;
          tr.appendChild(td);
        });
      body.insertBefore(tr, body.firstChild);
      if (a.severity === "critical") {
        var b = document.getElementById("alert-badge");
        if (b) { b.hidden = false; b.textContent = String((parseInt(b.textContent, 10) || 0) + 1); }
      }
    });
  }
  
})();
