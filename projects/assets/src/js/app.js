import { formatDuration } from "./format.js";
import { onReady } from "./dom.js";

onReady(() => {
  for (const el of document.querySelectorAll("[data-seconds]")) {
    el.textContent = formatDuration(Number(el.dataset.seconds));
  }
});
