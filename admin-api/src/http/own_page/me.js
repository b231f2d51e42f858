// A person's own page: the one script, for the "Enable alerts on this device" button only.
// Everything else on the page works without it. It registers the service worker (/sw.js, root
// scope), subscribes with the server's VAPID key and posts the subscription to the page's own
// devices address. The state it reaches is on <html data-alerts="...">, for people and tests.
(function () {
  "use strict";
  var button = document.getElementById("enable-alerts");
  var status = document.getElementById("alerts-status");
  if (!button || !status) return;
  var root = document.documentElement;
  function say(text, state) {
    status.textContent = text;
    root.setAttribute("data-alerts", state);
  }
  function keyBytes(b64url) {
    var b64 = b64url.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    var raw = atob(b64);
    var out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  // Tell the service worker which page is this person's, so a click on an alert (whose
  // address carries no secret) opens it.
  function tellWorker() {
    if (!("serviceWorker" in navigator)) return;
    navigator.serviceWorker.getRegistration("/").then(function (r) {
      var worker = r && (r.active || r.waiting || r.installing);
      if (worker) worker.postMessage({ page: location.pathname });
    }).catch(function () { /* no worker: nothing to tell */ });
  }
  tellWorker();
  if (!("serviceWorker" in navigator) || !("PushManager" in window) || !("Notification" in window)) {
    button.disabled = true;
    say("This browser cannot show alerts. On an iPhone, add this page to the Home Screen first.", "unsupported");
    return;
  }
  say("Tap the button, then allow notifications.", "ready");
  button.addEventListener("click", async function () {
    button.disabled = true;
    say("Switching alerts on…", "working");
    try {
      var permission = await Notification.requestPermission();
      if (permission !== "granted") throw new Error("notifications are blocked for this site in the browser's settings");
      say("Installing the alerts helper…", "registering");
      var registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
      await navigator.serviceWorker.ready;
      tellWorker();
      var keyRes = await fetch("/push/vapid-public-key", { credentials: "same-origin" });
      if (!keyRes.ok) throw new Error("this server does not send alerts (no push key)");
      var key = (await keyRes.json()).key;
      say("Asking the browser's push service for an address…", "subscribing");
      var subscription = await registration.pushManager.getSubscription();
      if (!subscription) {
        subscription = await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) });
      }
      say("Saving this device…", "saving");
      var res = await fetch(button.getAttribute("data-action"), {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(subscription.toJSON()),
      });
      if (!res.ok) {
        var body = {};
        try { body = await res.json(); } catch (_) { /* not JSON */ }
        throw new Error(body.message || "the server answered " + res.status);
      }
      say("Alerts are on for this device. Reload the page to see it in your devices.", "on");
    } catch (e) {
      button.disabled = false;
      say("Alerts could not be switched on: " + (e && e.message ? e.message : e), "error");
    }
  });
})();
