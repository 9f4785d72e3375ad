// The fleet page's behaviour: live updates (server-sent events, else a poll), relative
// times, and the actions, sent to the boot server's API with the admin token.
// Everything the server sends is already escaped HTML; text from answers goes in as text.
"use strict";
(function () {
  const live = document.getElementById("live");
  const link = document.getElementById("link");
  const notice = document.getElementById("notice");
  const token = document.getElementById("token");
  const KEY = "ironbake-admin-token";

  function ago(s) {
    if (s < 0) s = 0;
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 129600) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  function times() {
    const now = Date.now() / 1000;
    for (const t of document.querySelectorAll("time[data-unix]")) {
      const at = Number(t.dataset.unix);
      if (!t.title) t.title = t.textContent;
      t.textContent = ago(now - at);
    }
  }
  function show(ok, text) {
    notice.hidden = false;
    notice.className = ok ? "ok" : "bad";
    notice.textContent = text;
  }
  function linkState(state, words) {
    link.className = "link " + state;
    link.textContent = words;
  }
  function replace(html) {
    live.innerHTML = html;
    times();
  }

  // Live updates.
  const source = live.dataset.source;
  function poll() {
    fetch(source + "?once=1", { cache: "no-store" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { replace(html); linkState("live", "polling"); })
      .catch(() => linkState("down", "server unreachable"))
      .finally(() => setTimeout(poll, 3000));
  }
  if (source && window.EventSource) {
    const es = new EventSource(source);
    es.addEventListener("update", (e) => { replace(e.data); linkState("live", "live"); });
    es.onopen = () => linkState("live", "live");
    es.onerror = () => linkState("down", "reconnecting");
  } else if (source) {
    poll();
  }
  times();
  setInterval(times, 1000);

  // The token stays in this tab only.
  if (token) {
    token.value = sessionStorage.getItem(KEY) || "";
    token.addEventListener("input", () => sessionStorage.setItem(KEY, token.value.trim()));
  }

  async function call(method, url, body) {
    const headers = { "Content-Type": "application/json" };
    const t = token ? token.value.trim() : "";
    if (t) headers["Authorization"] = "Bearer " + t;
    let r, text;
    try {
      r = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      text = await r.text();
    } catch (e) {
      return { ok: false, status: 0, data: { error: "the server did not answer: " + e } };
    }
    let data;
    try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
    return { ok: r.ok, status: r.status, data };
  }
  function refusal(r) {
    const why = (r.data && r.data.error) || "HTTP " + r.status;
    return (r.status === 401 ? "refused (401): " : "failed (" + r.status + "): ") + why;
  }

  const actions = {
    async power(b) {
      const what = b.dataset.power, node = b.dataset.node;
      if (what !== "on" && !confirm(what === "off" ? "Power " + node + " off?" : "Reboot " + node + "?")) return;
      const r = await call("POST", "/api/v1/power", { action: what, nodes: [node] });
      if (!r.ok) return show(false, "power " + what + " " + node + ": " + refusal(r));
      const lines = r.data.map((x) => x.node + ": " + (x.ok ? "" : "not done: ") + x.done + " (" + x.via + ")");
      show(r.data.every((x) => x.ok), "power " + what + "\n" + lines.join("\n"));
    },
    async rollout(b) {
      const recipe = b.dataset.recipe, version = b.dataset.version;
      if (!confirm("Roll " + recipe + "@" + version + " out to every node of " + recipe + ", one at a time?")) return;
      const r = await call("POST", "/api/v1/rollouts", { recipe, version });
      if (!r.ok) return show(false, "rollout " + recipe + "@" + version + ": " + refusal(r));
      show(true, "rollout " + r.data.id + " started: " + recipe + "@" + version);
    },
    async abort(b) {
      const r = await call("POST", "/api/v1/rollouts/" + encodeURIComponent(b.dataset.rollout) + "/abort");
      show(r.ok, r.ok ? "rollout " + b.dataset.rollout + ": abort asked" : refusal(r));
    },
    async resume(b) {
      const r = await call("POST", "/api/v1/rollouts/" + encodeURIComponent(b.dataset.rollout) + "/resume");
      show(r.ok, r.ok ? "rollout " + b.dataset.rollout + ": resumed" : refusal(r));
    },
    async enroll(b) {
      const d = document.getElementById("enroll");
      const f = document.getElementById("enroll-form");
      f.elements.mac.value = b.dataset.mac;
      f.elements.name.value = "";
      d.showModal();
    },
  };
  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action]");
    if (!b || !actions[b.dataset.action]) return;
    e.preventDefault();
    b.disabled = true;
    try { await actions[b.dataset.action](b); } finally { b.disabled = false; }
  });
  const form = document.getElementById("enroll-form");
  if (form) {
    form.addEventListener("submit", async (e) => {
      if (e.submitter && e.submitter.value === "cancel") return;
      e.preventDefault();
      if (!form.reportValidity()) return;
      const body = { mac: form.elements.mac.value, name: form.elements.name.value, recipe: form.elements.recipe.value };
      const r = await call("POST", "/api/v1/inventory/nodes", body);
      document.getElementById("enroll").close();
      show(r.ok, r.ok ? body.mac + " is now node " + body.name + " (" + body.recipe + ")" : "enroll " + body.mac + ": " + refusal(r));
    });
  }
})();
