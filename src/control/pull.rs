//! Pull mode (`[upstream.pull]`): the gateway long-polls upstream for commands, for gateways
//! behind NAT. The protocol is `crate::upstream::pull`'s; this is its loop: poll (signed),
//! check the answer (signed, within the tolerance, not a replay), take every command through
//! [`Control::take`] in order, keep the new cursor durably, poll again at once with it and
//! what became of each command. A command not taken for now (429, the daemon stopping) keeps
//! the old cursor, so the answer comes again after [`super::commands::RETRY_AFTER`]; a failed
//! poll is retried after `upstream::pull::backoff`. Nothing is lost by a crash between taking
//! and keeping the cursor: the commands come again and their own ids make them no-ops.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::commands::{Reply, RETRY_AFTER};
use super::Control;
use crate::fault_log::FaultLog;
use crate::sign::Signer;
use crate::upstream::command;
use crate::upstream::config::PullConfig;
use crate::upstream::gate::{Gate, Signed};
use crate::upstream::pull::{backoff, pace, parse_answer, Answer, Poll, Taken};

/// The largest answer read.
pub const MAX_ANSWER: usize = 1024 * 1024;

pub struct Puller {
    pub control: Arc<Control>,
    pub config: PullConfig,
    pub gateway_id: String,
    pub signer: Signer,
    pub gate: Gate,
}

impl Puller {
    pub async fn run(mut self, cancel: CancellationToken) {
        let client = match crate::tls::client_config(None).and_then(|tls| {
            Ok(reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(self.config.wait + Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("edgehook/", env!("CARGO_PKG_VERSION")))
                .build()?)
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "pull mode cannot start its HTTP client; no commands are pulled");
                return;
            }
        };
        let url = crate::secret::redact_url(&self.config.url);
        tracing::info!(url = %url, wait = ?self.config.wait, "pulling commands from upstream");
        let log = Mutex::new(FaultLog::new(Duration::from_secs(60)));
        let mut cursor = self.control.outbox.pull_cursor();
        let mut taken: Vec<Taken> = Vec::new();
        let mut failures = 0u32;
        loop {
            let poll = Poll {
                gateway_id: self.gateway_id.clone(),
                cursor: cursor.clone(),
                wait: self.config.wait.as_secs(),
                taken: taken.clone(),
            };
            let asked = tokio::time::Instant::now();
            let polled = tokio::select! {
                _ = cancel.cancelled() => return,
                polled = self.poll(&client, &poll, &log) => polled,
            };
            let answer = match polled {
                Ok(answer) => {
                    failures = 0;
                    answer
                }
                Err(why) => {
                    failures += 1;
                    self.control.metrics.upstream.poll_failed();
                    let pause = backoff(failures);
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(url = %url, failures, retry_in = ?pause, "pulling commands failed: {why}");
                    }
                    if sleep(pause, &cancel).await {
                        return;
                    }
                    continue;
                }
            };
            let pause = pace(asked.elapsed(), answer.commands.len());
            let (results, all_taken) = self.take_all(answer.commands).await;
            taken = results;
            if !all_taken {
                if sleep(Duration::from_secs(RETRY_AFTER), &cancel).await {
                    return;
                }
                continue;
            }
            if let Some(next) = answer.cursor.filter(|c| Some(c) != cursor.as_ref()) {
                match self.keep_cursor(&next).await {
                    Ok(()) => cursor = Some(next),
                    Err(e) => {
                        // Polling on from the old cursor only brings taken commands again.
                        tracing::error!(error = %e, "cannot keep the pull cursor; polling again from the last one kept");
                        if sleep(backoff(1), &cancel).await {
                            return;
                        }
                    }
                }
            }
            if !pause.is_zero() && sleep(pause, &cancel).await {
                return;
            }
        }
    }

    /// One signed poll, and its answer checked.
    async fn poll(
        &mut self,
        client: &reqwest::Client,
        poll: &Poll,
        log: &Mutex<FaultLog>,
    ) -> Result<Answer, String> {
        let body = serde_json::to_vec(poll).expect("a poll serialises");
        let id = format!("poll_{}", uuid::Uuid::now_v7().simple());
        let now = crate::clock::system_now() / 1000;
        let mut request = client
            .post(&self.config.url)
            .header("content-type", "application/json");
        for (name, value) in self.signer.headers(&id, now, &body) {
            request = request.header(name, value);
        }
        let mut response = request.body(body).send().await.map_err(|e| {
            format!(
                "no answer ({})",
                crate::deliver::transport::describe_reqwest_error(&e)
            )
        })?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!(
                "upstream answered HTTP {status} (a poll wants 200)"
            ));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (id, ts, sig) = (
            header("webhook-id"),
            header("webhook-timestamp"),
            header("webhook-signature"),
        );
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("the answer broke off ({e})"))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("the answer is over {MAX_ANSWER} bytes"));
            }
            bytes.extend_from_slice(&chunk);
        }
        let signed = Signed {
            id: id.as_deref(),
            timestamp: ts.as_deref(),
            signature: sig.as_deref(),
        };
        let now = crate::clock::system_now() / 1000;
        if let Err(why) = self.gate.check(signed, &bytes, now) {
            super::push::refused(&self.control, log, "pull", why);
            return Err(format!("the answer is refused: {}", why.why()));
        }
        parse_answer(&bytes)
    }

    /// Take `commands` in order; stop at the first not taken for now. What became of each,
    /// and whether all were taken.
    async fn take_all(&self, commands: Vec<crate::upstream::pull::Pulled>) -> (Vec<Taken>, bool) {
        let mut results = Vec::with_capacity(commands.len());
        for pulled in commands {
            let now = crate::clock::system_now();
            let reply = match pulled.command {
                Err(why) => Reply::error(400, Some("id"), &why),
                Ok(command) => match command::parse(&Value::Object(command), now) {
                    Err(e) => Reply::error(400, Some(&e.field), &e.message),
                    Ok(c) => self.control.take(c).await,
                },
            };
            self.control.metrics.upstream.taken("pull", reply.status);
            if !reply.is_final() {
                tracing::warn!(command = %pulled.id, status = reply.status, "a pulled command is not taken for now; the same answer is asked for again later");
                return (results, false);
            }
            if reply.status >= 300 {
                tracing::info!(command = %pulled.id, status = reply.status, error = %reply.body["error"], "a pulled command is refused");
            }
            results.push(Taken {
                id: pulled.id,
                status: reply.status,
                error: reply.body["error"].as_str().map(str::to_string),
            });
        }
        (results, true)
    }

    async fn keep_cursor(&self, cursor: &str) -> Result<(), String> {
        let outbox = &self.control.outbox;
        outbox.set_pull_cursor(cursor).map_err(|e| e.to_string())?;
        outbox.flush().await.map_err(|e| e.to_string())
    }
}

/// Sleep `pause` unless cancelled first (then true).
async fn sleep(pause: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}
