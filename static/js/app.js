// aibaas dashboard: tiny progressive enhancements, no dependencies.
(function () {
  "use strict";
  function copyText(input) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(input.value);
    }
    input.select();
    return new Promise(function (resolve, reject) {
      try { document.execCommand("copy") ? resolve() : reject(new Error("copy refused")); }
      catch (err) { reject(err); }
    });
  }
  // <select data-autosubmit> submits its form on change (no inline handlers: see the CSP).
  document.addEventListener("change", function (event) {
    var select = event.target.closest("[data-autosubmit]");
    if (select && select.form) { select.form.submit(); }
  });
  // A read-only secret (the new key) selects itself on focus, ready to copy.
  document.addEventListener("focusin", function (event) {
    if (event.target.matches && event.target.matches("input[data-select-on-focus]")) {
      event.target.select();
    }
  });
  // <form data-confirm="question"> asks before it submits (removing a member, leaving...).
  document.addEventListener("submit", function (event) {
    var form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.getAttribute("data-confirm"))) { event.preventDefault(); }
  });
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy-target]");
    if (!button) { return; }
    var input = document.getElementById(button.getAttribute("data-copy-target"));
    var status = document.querySelector("[data-copy-status]");
    copyText(input).then(function () {
      button.textContent = "Copied";
      if (status) { status.textContent = "Copied to the clipboard."; }
    }, function () {
      input.select();
      if (status) { status.textContent = "Press Ctrl+C (⌘C) to copy the selected key."; }
    });
  });
})();
