// The preference centre, with script: each switch saves as it is flipped (the form's Save
// button is the way without script). The page's URL holds its token; the switch URL is on it.
"use strict";
document.documentElement.classList.add("js");
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("preferences");
  if (!form) return;
  const status = document.getElementById("status");
  const say = (text, failed) => {
    status.textContent = text;
    status.classList.toggle("failed", !!failed);
  };
  form.addEventListener("submit", (event) => event.preventDefault());
  form.addEventListener("keydown", (event) => {
    // Space flips a checkbox natively; Enter does too on a switch (and must not submit).
    if (event.key === "Enter" && event.target.matches('input[role="switch"]')) {
      event.preventDefault();
      event.target.click();
    }
  });
  form.addEventListener("change", async (event) => {
    const box = event.target;
    if (!box.matches('input[role="switch"]')) return;
    const enabled = box.checked;
    say(form.dataset.saving);
    box.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(form.dataset.switchUrl, {
        method: "POST",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({category: box.dataset.category, channel: box.dataset.channel, enabled}),
      });
      if (!response.ok) throw new Error(String(response.status));
      const saved = await response.json();
      box.checked = saved.enabled;
      say(form.dataset.saved);
    } catch (error) {
      box.checked = !enabled;
      say(form.dataset.failed, true);
    } finally {
      box.removeAttribute("aria-busy");
    }
  });
});
