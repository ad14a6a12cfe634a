//! mosquitto, started on a free port, so a test can kill and restart it.

use super::*;

/// A real mosquitto, with persistence so it can be restarted with our session intact.
pub struct Mosquitto {
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Mosquitto {
        Self::start_with(dir, "")
    }

    /// Start with extra configuration lines (more listeners, TLS).
    pub fn start_with(dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: started as root, mosquitto would otherwise switch to the
                // `mosquitto` user, which cannot write its persistence file in our temp dir
                // (it is ignored when not started as root).
                "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\npersistence true\npersistence_location {}/\n\
                 max_queued_messages 0\nmax_inflight_messages 1000\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n{extra}\n",
                data.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            port,
            conf,
            child: None,
        };
        m.restart();
        m
    }

    fn binary() -> &'static str {
        [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "/usr/bin/mosquitto",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("mosquitto is not installed (apt-get install -y mosquitto)")
    }

    /// Start again on the same port and persistence directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        // Its log (errors and warnings) goes next to its configuration, to read after a failure.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.conf.with_extension("log"))
            .unwrap();
        let child = Command::new(Self::binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        wait_listening(self.port, Duration::from_secs(10));
    }

    /// SIGTERM and wait: what `systemctl restart mosquitto` or an upgrade does. The broker
    /// saves its sessions, queued and in-flight messages to its persistence file.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe_kill(c.id(), 15);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("mosquitto did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no chance to save sessions.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every payload published on `topic` (a filter) from now on, as an independent MQTT client
/// sees them, in order.
pub async fn watch(port: u16, topic: &str) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut options = rumqttc::MqttOptions::new("test-watcher", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
    client
        .subscribe(topic, rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let out = seen.clone();
    tokio::spawn(async move {
        let _client = client; // keep the connection open
        while let Ok(ev) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = ev {
                out.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    });
    seen
}
