// The conscience chat page: plain fetch against /v1/chat/completions, no build step.
"use strict";
const log = document.getElementById("log");
const form = document.getElementById("composer");
const promptBox = document.getElementById("prompt");
const keyBox = document.getElementById("api-key");
const statusEl = document.getElementById("status");
const history = [];

keyBox.value = localStorage.getItem("conscience-key") || "";
keyBox.addEventListener("change", () => localStorage.setItem("conscience-key", keyBox.value));

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;  // never innerHTML: model text is untrusted
  return node;
}

function row(list, name, value) {
  list.appendChild(el("dt", null, name));
  list.appendChild(el("dd", null, value === null || value === undefined ? "—" : String(value)));
}

function conscienceDetails(c) {
  const details = el("details", "conscience");
  const summary = el("summary", null, "conscience ");
  summary.appendChild(el("span", "badge status", c.status + (c.revised ? " · revised" : "")));
  details.appendChild(summary);
  const list = el("dl");
  row(list, "verdict", c.score === null ? "no verdict (" + c.status + ")" :
      "score " + c.score + (c.flagged ? " — flagged" : " — not flagged") + " (threshold " + c.threshold + ")");
  row(list, "framing", c.framing);
  row(list, "mode", c.mode);
  row(list, "rounds", c.rounds);
  if (c.error) row(list, "error", c.error);
  if (c.draft !== undefined) {
    row(list, "draft", c.draft);
    (c.alternatives || []).forEach((alt) =>
      row(list, "alternative " + alt.round, alt.answer + "\n[score " + alt.score + (alt.flagged ? ", flagged" : "") + "]"));
  } else {
    row(list, "draft", "hidden (start the server with --expose-trace to show it)");
  }
  details.appendChild(list);
  return details;
}

async function send(text) {
  history.push({ role: "user", content: text });
  log.appendChild(el("div", "msg user", text));
  const pending = el("div", "msg assistant pending", "…reviewing");
  log.appendChild(pending);
  const headers = { "Content-Type": "application/json" };
  if (keyBox.value) headers["Authorization"] = "Bearer " + keyBox.value;
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST", headers, body: JSON.stringify({ messages: history }),
    });
    const body = await reply.json();
    if (!reply.ok) throw new Error((body.error && body.error.message) || reply.statusText);
    const choice = body.choices[0];
    const c = body.conscience || {};
    pending.className = "msg assistant answer " + (c.status || "") + (c.flagged ? " flagged" : "");
    pending.textContent = choice.message.content;
    if (body.conscience) pending.appendChild(conscienceDetails(body.conscience));
    history.push({ role: "assistant", content: choice.message.content });
  } catch (err) {
    pending.className = "msg assistant error";
    pending.textContent = "Error: " + err.message;
    history.pop();
  }
  log.scrollTop = log.scrollHeight;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = promptBox.value.trim();
  if (!text) return;
  promptBox.value = "";
  send(text);
});
promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
});

fetch("/health").then((r) => r.json()).then((h) => {
  // without the API key /health says only ok / not ok
  statusEl.textContent = h.model === undefined ? "server " + h.status
    : h.model + " · " + h.mode + (h.conscience ? "" : " · conscience off");
}).catch(() => { statusEl.textContent = "server unreachable"; });
