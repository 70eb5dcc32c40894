// The overview's counters refresh in place: poll the JSON at [data-live-url] and write each
// number into its [data-live="requests.used"] element (meters: [data-live-meter]). Paused while
// the tab is hidden, one request at a time; stops when the session is gone (a redirect to the
// login page, a 4xx). Without JavaScript the page shows the counters as of its loading.
(function () {
  "use strict";
  var root = document.querySelector("[data-live-url]");
  if (!root || !window.fetch) { return; }
  var url = root.getAttribute("data-live-url");
  var interval = parseInt(root.getAttribute("data-live-interval"), 10) || 5000;
  var status = root.querySelector("[data-live-status]");
  var grouped = new Intl.NumberFormat("en-US"); // as Django's intcomma: 12,345
  var timer = null;
  var inFlight = false;
  var stopped = false;
  var delay = interval;

  function read(data, path) {
    return path.split(".").reduce(function (value, part) {
      return value === null || value === undefined ? value : value[part];
    }, data);
  }
  function text(value) { return typeof value === "number" ? grouped.format(value) : String(value); }
  function say(message) {
    if (status) { status.hidden = false; status.textContent = message; }
  }
  function apply(data) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      var value = read(data, el.getAttribute("data-live"));
      if (value !== null && value !== undefined && el.textContent !== text(value)) {
        el.textContent = text(value);
      }
    });
    document.querySelectorAll("[data-live-meter]").forEach(function (el) {
      var value = read(data, el.getAttribute("data-live-meter"));
      if (typeof value === "number") { el.value = value; el.textContent = value + "%"; }
    });
    say("· live, updated " + new Date().toLocaleTimeString());
  }
  function schedule() {
    if (!stopped && !document.hidden && timer === null && !inFlight) {
      timer = window.setTimeout(poll, delay);
    }
  }
  function poll() {
    timer = null;
    if (inFlight || stopped) { return; }
    inFlight = true;
    fetch(url, { credentials: "same-origin", redirect: "manual", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.type === "opaqueredirect" || (response.status >= 400 && response.status < 500)) {
          stopped = true; // logged out, or no organization any more: reloading says what happened
          say("· updates stopped: reload the page");
          return null;
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (data) {
        if (data) { apply(data); delay = interval; }
      }, function () {
        delay = Math.min(delay * 2, 60000); // a server restart or a network blip: back off
      })
      .then(function () { inFlight = false; schedule(); });
  }
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) {
      if (timer !== null) { window.clearTimeout(timer); timer = null; }
    } else if (timer === null && !inFlight && !stopped) {
      poll(); // back on the tab: fresh numbers at once
    }
  });
  schedule();
})();
