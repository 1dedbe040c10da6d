// Safehold's own small script: the pages work without it; it adds copy-to-clipboard, hiding a
// revealed password again, live refresh of dashboard parts, confirmations and the "/" search key.
"use strict";

function safeholdCopy(button) {
  const target = document.querySelector(button.dataset.copyTarget);
  if (!target) return;
  const text = target.value !== undefined ? target.value : target.textContent;
  navigator.clipboard.writeText(text.trim()).then(
    () => { button.textContent = "Copied"; setTimeout(() => { button.textContent = "Copy"; }, 2000); },
    () => { button.textContent = "Copy failed"; });
}

function safeholdHideLater(el) {
  const seconds = parseInt(el.dataset.hideAfter, 10) || 20;
  const counter = el.querySelector("[data-countdown]");
  let left = seconds;
  const tick = setInterval(() => {
    left -= 1;
    if (counter) counter.textContent = String(left);
    if (left <= 0) {
      clearInterval(tick);
      el.querySelectorAll("[data-secret]").forEach((s) => { s.textContent = "••••••••"; s.value = ""; });
      el.classList.add("hidden-again");
      el.querySelectorAll("[data-copy-target]").forEach((b) => { b.disabled = true; });
    }
  }, 1000);
}

function safeholdRefresh(el) {
  const every = (parseInt(el.dataset.refreshEvery, 10) || 5) * 1000;
  const url = el.dataset.refreshUrl;
  const run = () => {
    if (el.matches(":focus-within")) { setTimeout(run, every); return; }  // someone is typing in it
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { el.innerHTML = html; el.dataset.refreshedAt = new Date().toISOString(); el.classList.remove("stale"); })
      .catch(() => { el.classList.add("stale"); })
      .finally(() => { setTimeout(run, every); });
  };
  setTimeout(run, every);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-copy-target]").forEach((b) => {
    b.hidden = false;
    b.addEventListener("click", (ev) => { ev.preventDefault(); safeholdCopy(b); });
  });
  document.querySelectorAll("[data-hide-after]").forEach(safeholdHideLater);
  document.querySelectorAll("[data-refresh-url]").forEach(safeholdRefresh);
  document.querySelectorAll("form[data-confirm]").forEach((f) => {
    f.addEventListener("submit", (ev) => { if (!window.confirm(f.dataset.confirm)) ev.preventDefault(); });
  });
  const search = document.querySelector("[data-search]");
  if (search) {
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "/" && document.activeElement.tagName !== "INPUT" && document.activeElement.tagName !== "TEXTAREA") {
        ev.preventDefault(); search.focus();
      }
    });
  }
});
