//! Actions to a room display through a run, and what must be told of them.

use super::*;

/// Actions to a display through the run (see the module docs).
pub struct Actions {
    pub rng: fastrand::Rng,
    /// The push listener's port; none: the local API.
    pub push: Option<u16>,
    pub display: SimDevice,
    pub id: String,
    pub submitted: usize,
    /// Ids answered 202 or 200: each must be told exactly once.
    pub acknowledged: Vec<String>,
    /// Answers no submission may get.
    pub unexpected: Vec<String>,
}

impl Actions {
    /// Now and then, submit an action to the display. A refused connection or no answer (the
    /// daemon is down, or the disk full) is not an acknowledgement; the action may or may not
    /// have been taken, and may be told.
    pub async fn maybe_submit(&mut self, world: &World, state: &Path) {
        if self.rng.u8(..10) != 0 {
            return;
        }
        let id = format!("act-{:x}-{}", world.seed, self.submitted);
        self.submitted += 1;
        let data =
            json!({"id": id, "device": self.id, "name": "show_message", "params": {"text": id}});
        let within = Duration::from_secs(10);
        let answer = match self.push {
            Some(port) => {
                let body = json!({"type": "device.action_requested", "data": data}).to_string();
                // Signed by the daemon's clock, which the harness's clock steps move.
                let ts = (common::unix_now() as i64 + world.clock_offset) as u64;
                let msg = format!("msg-{id}");
                let headers = common::push_headers(port, &body, common::UPSTREAM_SECRET, &msg, ts);
                common::try_raw(port, "POST", "/v1/commands", &headers, Some(&body), within).await
            }
            None => {
                let token = std::fs::read_to_string(state.join("api-token")).unwrap_or_default();
                let port = world.daemon.metrics_port;
                let headers = vec![
                    ("Host".to_string(), format!("127.0.0.1:{port}")),
                    (
                        "Authorization".to_string(),
                        format!("Bearer {}", token.trim()),
                    ),
                ];
                let body = data.to_string();
                common::try_raw(port, "POST", "/v1/actions", &headers, Some(&body), within).await
            }
        };
        match answer {
            Ok(a) if a.status == 202 || a.status == 200 => self.acknowledged.push(id),
            // Not durable (a full disk) or stopping: not taken, said so.
            Ok(a) if a.status == 500 || a.status == 503 => {}
            // Signed by the clock the daemon is about to see (libfaketime caches it for a
            // second): refused as stale, as a gateway whose clock just jumped refuses.
            Ok(a)
                if a.status == 401
                    && a.body.contains("tolerance")
                    && world
                        .clock_stepped
                        .is_some_and(|at| at.elapsed() < Duration::from_secs(3)) => {}
            Ok(a) => self
                .unexpected
                .push(format!("{id}: {} {}", a.status, a.body)),
            Err(_) => {}
        }
    }

    /// `dropped`: how many events `default` counts dropped (a paused endpoint whose share is
    /// full drops its new events, all of them, for it alone): so many may be missing.
    pub fn verify(&self, all: &Receiver, daemon: &Daemon, dropped: u64) -> Result<(), String> {
        if !self.unexpected.is_empty() {
            return Err(format!(
                "unexpected answers to submissions: {:?}",
                self.unexpected
            ));
        }
        // Every acknowledged action ends (the daemon says so), executed or timed out.
        for id in &self.acknowledged {
            let path = format!("/v1/actions/{id}");
            let status = common::http_get(daemon.metrics_port, &path)
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .and_then(|v| v["status"].as_str().map(str::to_string));
            match status.as_deref() {
                Some("succeeded" | "timed_out") => {}
                other => return Err(format!("action {id} is {other:?}")),
            }
        }
        let told: Vec<(String, String)> = all.seen(|s| {
            s.of_type("device.action_completed")
                .into_iter()
                .map(|e| {
                    (
                        e["data"]["action_id"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        e["data"]["status"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        });
        let mut missing = Vec::new();
        for id in &self.acknowledged {
            let of: Vec<&String> = told
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, s)| s)
                .collect();
            match of.as_slice() {
                [] => missing.push(id),
                [s] if *s == "succeeded" || *s == "timed_out" => {}
                [s] => return Err(format!("action {id} told {s}")),
                more => return Err(format!("action {id} told {} times: {more:?}", more.len())),
            }
        }
        if missing.len() as u64 > dropped {
            return Err(format!(
                "actions acknowledged and never told: {missing:?} ({dropped} events dropped for default)"
            ));
        }
        let mut ids: Vec<&String> = told.iter().map(|(i, _)| i).collect();
        ids.sort();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("action {} told twice", w[0]));
        }
        if self.display.actions_executed() > self.submitted as u64 {
            return Err(format!(
                "the display executed {} actions of {} submitted",
                self.display.actions_executed(),
                self.submitted
            ));
        }
        Ok(())
    }
}
