// The playground: a chat over POST /v1/chat/completions with "stream": true (server-sent events).
// Plain JavaScript, no build step and nothing fetched from elsewhere.
// Learner mode (the "Show tokens" box) also asks for logprobs with top_logprobs: 5 and draws the answer
// token by token as the tokenizer split it; clicking a token shows the 5 most likely next tokens at that
// step with their probabilities (the model's own distribution, before temperature and top-k/top-p).
"use strict";

const $ = (id) => document.getElementById(id);
const history = []; // {role, content} of the conversation so far
let controller = null; // aborts the running request (the Stop button)
let modelId = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "message " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(label, body);
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return body;
}

// A token as text that shows its edges: a newline as ↵ (then the line break), an empty token as ∅.
function visible(token) {
  return token === "" ? "∅" : token.replace(/\n/g, "↵\n");
}

function percent(logprob) {
  const p = 100 * Math.exp(logprob);
  return (p >= 10 ? p.toFixed(1) : p.toPrecision(2)) + "%";
}

// Show one generated token's step in the inspector: the token chosen and the top 5 with bars.
function inspect(span) {
  document.querySelectorAll(".token.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  const entry = span.entry;
  $("inspector").hidden = false;
  $("inspector-step").textContent =
    "step " + span.dataset.step + ": chose " + JSON.stringify(entry.token) + " (" + percent(entry.logprob) + ")";
  const rows = $("top5").querySelector("tbody");
  rows.textContent = "";
  for (const alt of entry.top_logprobs) {
    const tr = document.createElement("tr");
    if (alt.token === entry.token) tr.className = "chosen";
    const tok = document.createElement("td");
    tok.className = "tok";
    tok.textContent = JSON.stringify(alt.token);
    const prob = document.createElement("td");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = (4 * Math.exp(alt.logprob)).toFixed(2) + "em";
    prob.append(bar, percent(alt.logprob));
    tr.append(tok, prob);
    rows.append(tr);
  }
}

function addToken(container, entry) {
  const span = document.createElement("span");
  span.className = "token";
  span.textContent = visible(entry.token);
  span.title = percent(entry.logprob);
  span.dataset.step = container.childElementCount + 1;
  span.entry = entry;
  span.addEventListener("click", () => inspect(span));
  container.append(span);
  return span;
}

async function loadModel() {
  try {
    const response = await fetch("v1/models", { headers: headers() });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error ? data.error.message : response.statusText);
    modelId = data.data[0].id;
    $("model").textContent = "model: " + modelId;
  } catch (e) {
    $("model").textContent = "model: unavailable (" + e.message + ")";
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
}

async function send(text) {
  if (!modelId) await loadModel();
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const output = addMessage("assistant", "");
  const system = $("system").value.trim();
  const topK = parseInt($("top_k").value, 10);
  const body = {
    model: modelId,
    messages: (system ? [{ role: "system", content: system }] : []).concat(history),
    stream: true,
    stream_options: { include_usage: true },
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10),
  };
  if (topK > 0) body.top_k = topK;
  const learner = $("learner").checked;
  if (learner) {
    body.logprobs = true;
    body.top_logprobs = 5;
  }
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let first = null, pieces = 0, reply = "";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error ? data.error.message : response.statusText);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const data = event.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) {
          $("prompt-tokens").textContent = chunk.usage.prompt_tokens;
          $("completion-tokens").textContent = chunk.usage.completion_tokens;
          const seconds = (performance.now() - (first || started)) / 1000;
          if (seconds > 0 && chunk.usage.completion_tokens > 1) {
            $("rate").textContent = ((chunk.usage.completion_tokens - 1) / seconds).toFixed(1);
          }
        }
        for (const choice of chunk.choices || []) {
          if (learner && choice.logprobs && choice.logprobs.content) {
            for (const entry of choice.logprobs.content) inspect(addToken(output, entry));
          }
          const piece = (choice.delta && choice.delta.content) || "";
          if (!piece) continue;
          if (first === null) {
            first = performance.now();
            $("ttft").textContent = ((first - started) / 1000).toFixed(2) + " s";
          }
          pieces += 1;
          reply += piece;
          if (!learner) output.textContent = reply;
          $("completion-tokens").textContent = "≈" + pieces;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") addMessage("error", e.message);
  } finally {
    history.push({ role: "assistant", content: reply });
    controller = null;
    setBusy(false);
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || controller) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});
$("stop").addEventListener("click", () => controller && controller.abort());
$("clear").addEventListener("click", () => {
  history.length = 0;
  $("messages").textContent = "";
  $("inspector").hidden = true;
});
for (const id of ["temperature", "top_p"]) {
  $(id).addEventListener("input", () => ($(id + "-value").textContent = $(id).value));
}
$("api_key").addEventListener("change", loadModel);
loadModel();
