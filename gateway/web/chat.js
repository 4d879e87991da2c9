// Flywheel chat page: ask, read the answer, rate it with a thumb (and an optional comment).
// Plain browser JS, no build step. Model output is only ever set with textContent (never as HTML).
"use strict";

const KEY_STORAGE = "flywheel.chatKey";
const SESSION_STORAGE = "flywheel.sessionId";
const MODEL = "flywheel";
const THINKING = "Thinking…";
const MAX_TOKENS = 256; // keeps an answer (and the wait for it) short

const $ = (id) => document.getElementById(id);
const conversation = []; // the conversation so far, sent with every question

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function sessionId() {
  // One id per browser: sticky routing for chat, and the rater's identity for rate limits.
  let id = localStorage.getItem(SESSION_STORAGE);
  if (!id) {
    id = newId();
    localStorage.setItem(SESSION_STORAGE, id);
  }
  return id;
}

function showKeyForm(message) {
  $("key-form").hidden = false;
  $("chat").hidden = true;
  $("forget-key").hidden = true;
  if (message) $("status").textContent = message;
  $("key-input").focus();
}

function showChat() {
  $("key-form").hidden = true;
  $("chat").hidden = false;
  $("forget-key").hidden = false;
  $("question").focus();
}

async function api(path, body) {
  const key = localStorage.getItem(KEY_STORAGE) || "";
  const resp = await fetch(path, {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      "Authorization": `Bearer ${key}`,
      "X-Session-Id": sessionId(),
    },
    body: JSON.stringify(body),
  });
  let data = null;
  try {
    data = await resp.json();
  } catch (_) {
    data = null;
  }
  if (resp.status === 401) {
    localStorage.removeItem(KEY_STORAGE);
    showKeyForm("That key was refused; enter a chat key.");
  }
  if (!resp.ok) {
    const message = (data && data.error && data.error.message) || `HTTP ${resp.status}`;
    const err = new Error(message);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = `turn ${role}`;
  li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

function addAnswer(text, flywheel) {
  const node = $("answer-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".text").textContent = text;
  node.dataset.responseId = flywheel.response_id;
  node.dataset.policyVersion = flywheel.policy_version;
  for (const button of node.querySelectorAll(".thumb")) {
    button.addEventListener("click", () => rate(node, flywheel, button));
  }
  $("log").appendChild(node);
  node.scrollIntoView({ block: "end" });
}

async function rate(node, flywheel, button) {
  const status = node.querySelector(".rate-status");
  const comment = node.querySelector(".comment").value.trim();
  const body = {
    response_id: flywheel.response_id,
    feedback_token: flywheel.feedback_token,
    rating: button.dataset.rating,
    idempotency_key: newId(), // reused on the retry below, so a lost 202 does not count twice
  };
  if (comment) body.comment = comment;
  for (const b of node.querySelectorAll(".thumb")) b.setAttribute("aria-pressed", String(b === button));
  status.textContent = "Sending…";
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const result = await api("/v1/feedback", body);
      node.dataset.feedbackEventId = result.event_id;
      status.textContent = "Thanks for the feedback.";
      return;
    } catch (err) {
      if (err.status === undefined && attempt === 0) continue; // network error: retry once, same key
      status.textContent = `Feedback not sent: ${err.message}`;
      return;
    }
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question) return;
  $("question").value = "";
  $("send").disabled = true;
  $("status").textContent = THINKING;
  addTurn("user", question);
  conversation.push({ role: "user", content: question });
  try {
    const data = await api("/v1/chat/completions", { model: MODEL, messages: conversation, max_tokens: MAX_TOKENS });
    const text = (data.choices && data.choices[0] && data.choices[0].message.content) || "";
    conversation.push({ role: "assistant", content: text });
    addAnswer(text, data.flywheel);
  } catch (err) {
    conversation.pop();
    addTurn("error", `Error: ${err.message}`);
  } finally {
    $("send").disabled = false;
    if ($("status").textContent === THINKING) $("status").textContent = ""; // keep e.g. "key refused"
  }
}

function init() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    localStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    $("status").textContent = "";
    showChat();
  });
  $("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY_STORAGE);
    showKeyForm();
  });
  $("ask-form").addEventListener("submit", ask);
  $("question").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) ask(event);
  });
  if (localStorage.getItem(KEY_STORAGE)) showChat();
  else showKeyForm();
}

document.addEventListener("DOMContentLoaded", init);
