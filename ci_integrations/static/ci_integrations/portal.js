// The one script of our own: copy a freshly created token to the clipboard.
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copyTarget);
  const status = button.parentElement.querySelector(".copied");
  const done = (text) => { if (status) status.textContent = text; };
  input.select();
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(input.value).then(() => done("Copied."), () => done("Press Ctrl+C to copy."));
  } else {
    done(document.execCommand("copy") ? "Copied." : "Press Ctrl+C to copy.");
  }
});

// A date-time picked in the browser's time zone: say that zone's UTC offset (for the date picked, so daylight saving
// counts) in the hidden field the input names, so the server reads the time the person meant.
document.addEventListener("submit", (event) => {
  for (const input of event.target.querySelectorAll("input[data-offset-field]")) {
    const hidden = event.target.querySelector(`input[name="${input.dataset.offsetField}"]`);
    if (hidden && input.value) hidden.value = String(-new Date(input.value).getTimezoneOffset());
  }
});
