// Dashlight's service worker (root scope): shows each push as a notification and opens its
// address when the notification is clicked. The payload is JSON {title, body, tag, url}, and for
// a lesson reminder also {actions: [{action: "confirm", title}], confirm_url}: the Confirm action
// POSTs to confirm_url (this site only) and shows the answer.
// Pushes never carry the page's secret: a url of "/me#booking-7" opens the page this worker was
// last told about by the page itself (me.js posts {page: "/me/<token>"}), kept in Cache Storage.
"use strict";

var PAGE_CACHE = "dashlight-page";
var PAGE_KEY = "/__dashlight_page";

self.addEventListener("message", function (event) {
  var page = event.data && event.data.page;
  if (typeof page !== "string" || !/^\/me\/[0-9a-f]{64}$/.test(page)) return;
  event.waitUntil(
    caches.open(PAGE_CACHE).then(function (cache) {
      return cache.put(PAGE_KEY, new Response(page));
    })
  );
});

// The person's page for a token-less "/me…" address, or the site's root when none is known.
function pageFor(url) {
  var u = new URL(url);
  if (u.pathname !== "/me") return Promise.resolve(url);
  return caches
    .open(PAGE_CACHE)
    .then(function (cache) {
      return cache.match(PAGE_KEY);
    })
    .then(function (res) {
      return res ? res.text() : null;
    })
    .then(function (page) {
      return page ? self.location.origin + page + u.search + u.hash : self.location.origin + "/";
    })
    .catch(function () {
      return self.location.origin + "/";
    });
}

self.addEventListener("install", function () {
  self.skipWaiting();
});

self.addEventListener("activate", function (event) {
  event.waitUntil(self.clients.claim());
});

self.addEventListener("push", function (event) {
  var data = {};
  if (event.data) {
    try {
      data = event.data.json();
    } catch (_) {
      data = { body: event.data.text() };
    }
  }
  var options = { body: data.body || "", data: { url: data.url || "/", confirm_url: data.confirm_url || null } };
  if (data.tag) options.tag = data.tag;
  if (Array.isArray(data.actions) && data.confirm_url) {
    options.actions = data.actions
      .filter(function (a) { return a && a.action === "confirm"; })
      .map(function (a) { return { action: "confirm", title: String(a.title || "Confirm") }; });
  }
  event.waitUntil(self.registration.showNotification(data.title || "Dashlight", options));
});

// Only addresses on this site are opened (the page, an offer); anything else opens the site.
function target(url) {
  try {
    var u = new URL(url || "/", self.location.origin);
    return u.origin === self.location.origin ? u.href : self.location.origin + "/";
  } catch (_) {
    return self.location.origin + "/";
  }
}

// The Confirm action: POST the lesson's confirmation (its signed address, never the page's),
// then say how it went. Resolves to the server's JSON answer, or {error}.
function confirmLesson(notification) {
  var data = notification.data || {};
  var url = data.confirm_url && target(data.confirm_url);
  if (!url || url === self.location.origin + "/") return Promise.resolve({ error: "no confirmation address" });
  return fetch(url, { method: "POST", credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (res) {
      return res.json().catch(function () { return {}; }).then(function (body) {
        if (!res.ok) return { error: body.message || "the server answered " + res.status };
        return body;
      });
    })
    .catch(function (e) { return { error: String(e && e.message ? e.message : e) }; })
    .then(function (answer) {
      var title = answer.error ? "Could not confirm" : "Lesson confirmed";
      var body = answer.error ? answer.error + ". Open your page to confirm." : "Thanks: your instructor knows you'll be there.";
      return self.registration
        .showNotification(title, { body: body, tag: notification.tag || undefined, data: { url: data.url || "/" } })
        .catch(function () { /* no permission to show: the answer still stands */ })
        .then(function () { return answer; });
    });
}

self.addEventListener("notificationclick", function (event) {
  event.notification.close();
  if (event.action === "confirm") {
    var confirming = confirmLesson(event.notification);
    try {
      event.waitUntil(confirming);
    } catch (_) {
      /* an event dispatched by a script cannot be extended; the confirmation goes on */
    }
    return;
  }
  var wanted = target(event.notification.data && event.notification.data.url);
  event.waitUntil(
    pageFor(wanted).then(function (url) {
      return self.clients.matchAll({ type: "window", includeUncontrolled: true }).then(function (windows) {
        for (var i = 0; i < windows.length; i++) {
          if (windows[i].url === url && "focus" in windows[i]) return windows[i].focus();
        }
        return self.clients.openWindow(url);
      });
    })
  );
});
