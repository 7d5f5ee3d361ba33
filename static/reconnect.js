// Reconnecting, shared by the dashboard (app.js) and the console (console.js): capped
// exponential backoff with "equal jitter" (the n-th wait is half of min(cap, base·2ⁿ⁻¹) plus a
// random part of the other half, so that pages do not come back in lockstep), the status line
// that counts down to the next try, and the Reconnect button after the last attempt.

const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30000;
const MAX_ATTEMPTS = 8;

export class Reconnect {
  // `connect` opens a connection; `setStatus(state, text)` shows the connection state;
  // `button` (if any) is shown when the `maxAttempts` (default 8) are used up.
  constructor({ connect, setStatus, button, maxAttempts = MAX_ATTEMPTS }) {
    this.connect = connect;
    this.setStatus = setStatus;
    this.button = button;
    this.maxAttempts = maxAttempts;
    this.attempt = 0;
    this.retryTimer = null;
    this.countdownTimer = null;
  }

  // Whether a retry is due later (nothing should connect meanwhile).
  get waiting() {
    return this.retryTimer !== null;
  }

  // At the start of every connection attempt: stops the countdown, says what is happening.
  begin() {
    clearTimeout(this.retryTimer);
    clearInterval(this.countdownTimer);
    this.retryTimer = null;
    const attempt = this.attempt;
    this.setStatus("connecting", attempt ? `Reconnecting (attempt ${attempt})…` : "Connecting…");
  }

  // The connection is up: the next failure starts counting from the first attempt again.
  connected() {
    this.attempt = 0;
    if (this.button) this.button.hidden = true;
  }

  // The connection failed or closed: try again after the next wait, or give up.
  schedule() {
    if (this.retryTimer) return;
    this.attempt += 1;
    if (this.attempt > this.maxAttempts) {
      this.setStatus("disconnected", "Disconnected");
      if (this.button) this.button.hidden = false;
      return;
    }
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (this.attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    const due = Date.now() + delay;
    const tell = () => {
      const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
      this.setStatus("reconnecting", `Reconnecting (attempt ${this.attempt}, next try in ${left} s)`);
    };
    tell();
    this.countdownTimer = setInterval(tell, 1000);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  // The Reconnect button: start over at once.
  restart() {
    this.attempt = 0;
    this.connect();
  }
}
