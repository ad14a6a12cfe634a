//! A client of the daemon's control API: raw HTTP/1.1 over a TCP connection (one request per
//! connection), so the tests see exactly what goes over the wire, and a record of every
//! exchange for the OpenAPI check (`tests/python/openapi_check.py`).

use super::*;

/// One request and its answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// The control API of the daemon listening on `port`.
pub struct Api {
    pub port: u16,
    pub token: Option<String>,
    /// Every exchange, as the OpenAPI check reads them.
    pub exchanges: Mutex<Vec<Value>>,
}

impl Api {
    pub fn new(port: u16) -> Api {
        Api {
            port,
            token: None,
            exchanges: Mutex::new(Vec::new()),
        }
    }

    /// The API of `daemon`, calling with its token.
    pub fn with_token(daemon: &super::Daemon) -> Api {
        let mut api = Api::new(daemon.metrics_port);
        api.token = Some(daemon.token());
        api
    }

    /// `method path` with the token (if set) and a JSON `body`, recorded under the route
    /// `template` (e.g. `/v1/endpoints/{name}`).
    pub async fn call(
        &self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut headers = vec![("Host".to_string(), format!("127.0.0.1:{}", self.port))];
        if let Some(token) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {token}")));
        }
        let text = body.map(|b| b.to_string());
        let answer = raw(self.port, method, path, &headers, text.as_deref()).await;
        let recorded = if answer.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&answer.body).unwrap_or(Value::String(answer.body.clone()))
        };
        self.exchanges.lock().unwrap().push(serde_json::json!({
            "method": method, "path": template, "status": answer.status, "body": recorded,
        }));
        answer
    }

    pub async fn get(&self, template: &str, path: &str) -> Answer {
        self.call("GET", template, path, None).await
    }

    /// Check the recorded exchanges against the OpenAPI document the daemon serves, with
    /// Python's openapi-spec-validator and openapi-schema-validator (scripts/test installs
    /// them): each answer as documented. The test fails if they are missing.
    pub async fn check_answers(&self, dir: &Path) {
        let host = vec![("Host".to_string(), format!("127.0.0.1:{}", self.port))];
        let doc = raw(self.port, "GET", "/v1/openapi.json", &host, None).await;
        assert_eq!(doc.status, 200);
        let document = doc.body;
        let doc = dir.join("openapi.json");
        let exchanges = dir.join("exchanges.json");
        std::fs::write(&doc, &document).unwrap();
        std::fs::write(
            &exchanges,
            serde_json::to_vec_pretty(&*self.exchanges.lock().unwrap()).unwrap(),
        )
        .unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/openapi_check.py");
        let out = Command::new("python3")
            .arg(script)
            .arg(&doc)
            .arg(&exchanges)
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "the OpenAPI check failed (pip install openapi-spec-validator openapi-schema-validator if it is missing):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// One raw request on a fresh connection (`Connection: close`): status, headers, body.
pub async fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Answer {
    try_raw(port, method, path, headers, body, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`raw`], or why there was no answer (nothing listening, the connection broken, no answer
/// `within`), for callers that race the daemon's crashes.
pub async fn try_raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<&str>,
    within: Duration,
) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body.unwrap_or(""));
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(within, s.read_to_end(&mut out))
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
        .map_err(|e| format!("the answer broke off: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {text}"))?;
    Ok(Answer {
        status,
        headers: head.to_string(),
        body: body.to_string(),
    })
}
