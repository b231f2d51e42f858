// Dashlight dashboard: the only script. It makes the Retry, Pause and Resume buttons work by calling the JSON API
// (the same routes and rules as any client) with the session cookie and the X-Requested-With
// header the API asks of cookie-authenticated writes. Pages read fine without it.
(function () {
  "use strict";
  var FLASH_KEY = "dashlight.flash";

  function flash(message, bad) {
    var el = document.getElementById("flash");
    if (!el) return;
    el.textContent = message;
    el.className = bad ? "flash bad" : "flash";
    el.hidden = false;
  }

  function reloadWith(message) {
    try { sessionStorage.setItem(FLASH_KEY, message); } catch (e) { /* private mode */ }
    window.location.reload();
  }

  function errorOf(res) {
    return res.json().then(function (body) {
      return (body && body.message) || ("HTTP " + res.status);
    }, function () { return "HTTP " + res.status; });
  }

  function post(path, body) {
    var init = {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-Requested-With": "dashlight", "Accept": "application/json" }
    };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  function run(button, request, done, busy) {
    var label = button.textContent;
    button.disabled = true;
    button.textContent = busy || "Retrying…";
    request().then(function (res) {
      if (res.ok) {
        return res.json().then(function (body) { reloadWith(done(body)); });
      }
      return errorOf(res).then(function (msg) {
        if (res.status === 401) msg += " Sign in again.";
        throw new Error(msg);
      });
    }).catch(function (err) {
      button.disabled = false;
      button.textContent = label;
      flash(label + " failed: " + err.message, true);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    try {
      var pending = sessionStorage.getItem(FLASH_KEY);
      if (pending) { sessionStorage.removeItem(FLASH_KEY); flash(pending, false); }
    } catch (e) { /* private mode */ }

    var buttons = document.querySelectorAll("button[data-retry], button[data-retry-all], button[data-lift], button[data-control]");
    for (var i = 0; i < buttons.length; i++) buttons[i].hidden = false;

    document.addEventListener("click", function (ev) {
      var lift = ev.target.closest("button[data-lift]");
      if (lift) {
        var sid = lift.getAttribute("data-lift");
        lift.disabled = true;
        fetch("/api/suppressions/" + encodeURIComponent(sid), {
          method: "DELETE",
          credentials: "same-origin",
          headers: { "X-Requested-With": "dashlight", "Accept": "application/json" }
        }).then(function (res) {
          if (res.ok) { reloadWith("Suppression lifted: sends to it go out again."); return; }
          return errorOf(res).then(function (msg) { throw new Error(msg); });
        }).catch(function (err) {
          lift.disabled = false;
          flash("Lifting failed: " + err.message, true);
        });
        return;
      }
      var control = ev.target.closest("button[data-control]");
      if (control) {
        var path = control.getAttribute("data-control");
        var what = control.getAttribute("data-what");
        var body = { by: "dashboard" };
        // The Queues page reloads itself every few seconds: stop that, so it neither reloads
        // under the prompt nor cancels the request (the page reloads once the answer is in).
        window.stop();
        if (control.getAttribute("data-action") === "pause") {
          var reason = window.prompt("Pause " + what + ": why? (kept on record; optional)", "");
          if (reason === null) { window.location.reload(); return; }
          if (reason) body.reason = reason;
        }
        run(control, function () { return post(path, body); },
          function (res) {
            return res.paused_by ? what + " is paused." :
              what + " is resumed" + (res.woken ? "; " + res.woken + " held notification(s) on their way." : ".");
          }, "Working…");
        return;
      }
      var one = ev.target.closest("button[data-retry]");
      if (one) {
        var id = one.getAttribute("data-retry");
        run(one, function () { return post("/api/deliveries/" + encodeURIComponent(id) + "/retry"); },
          function () { return "Delivery #" + id + " is queued to be sent again."; });
        return;
      }
      var all = ev.target.closest("button[data-retry-all]");
      if (all) {
        var filter = {};
        ["status", "channel", "kind"].forEach(function (k) {
          var v = all.getAttribute("data-" + k);
          if (v) filter[k] = v;
        });
        // Exactly the rows shown, not whatever matches the filter by now.
        var ids = all.getAttribute("data-ids");
        if (ids) filter.ids = ids.split(",").map(Number);
        run(all, function () { return post("/api/deliveries/retry", filter); },
          function (body) { return body.retried + " deliver" + (body.retried === 1 ? "y is" : "ies are") + " queued to be sent again."; });
      }
    });
  });
})();
