//! The set-up most tests share: a temporary directory, mosquitto, a receiver and the daemon
//! between them, so that a test reads as its story.

use super::*;

/// A broker, a receiver and a daemon configured for them. Fields drop in order: the daemon is
/// killed before its broker stops and before its directory is removed.
pub struct Rig {
    pub daemon: Daemon,
    pub receiver: Receiver,
    pub broker: Mosquitto,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// The rig with `extra` added to the daemon's configuration, the daemon not started yet (for
    /// a receiver or an environment set before it runs).
    pub async fn new(extra: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(dir.path());
        let receiver = Receiver::start().await;
        let daemon = Daemon::new(dir.path(), broker.port, &receiver.url, extra);
        Rig {
            daemon,
            receiver,
            broker,
            dir,
        }
    }

    /// The rig whose daemon's `[webhook]` section (with its subtables) is what `webhook` makes
    /// of the receiver's URL, the daemon not started yet.
    pub async fn with_webhook(webhook: impl FnOnce(&str) -> String) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(dir.path());
        let receiver = Receiver::start().await;
        let daemon = Daemon::new_with_webhook(dir.path(), broker.port, &webhook(&receiver.url));
        Rig {
            daemon,
            receiver,
            broker,
            dir,
        }
    }

    /// The rig with `extra` added to the daemon's configuration, the daemon started and
    /// connected to the broker.
    pub async fn start(extra: &str) -> Rig {
        let mut rig = Self::new(extra).await;
        rig.daemon.start();
        rig
    }
}

impl Rig {
    /// Its parts as a test names them: `let (_dir, broker, receiver, mut daemon) = ….parts();`.
    /// Bound in this order, they drop in the safe order: the daemon first.
    pub fn parts(self) -> (tempfile::TempDir, Mosquitto, Receiver, Daemon) {
        (self.dir, self.broker, self.receiver, self.daemon)
    }
}
