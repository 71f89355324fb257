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
