//! The outbox's queues, one per endpoint: routing (which events each takes), their sizes,
//! draining, and the wake-up of delivery when one is appended to.

use super::*;

impl Outbox {
    /// The queue of `endpoint`, if there is one.
    pub fn queue(&self, endpoint: &str) -> Option<QueueId> {
        read(&self.queues)
            .iter()
            .position(|q| q.endpoint == endpoint)
            .map(QueueId)
    }

    /// Every queue: its id, endpoint, and whether new events are routed to it.
    pub fn queues(&self) -> Vec<(QueueId, String, bool)> {
        let routes = self.routes_now();
        self.all_queues()
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let routed = routes.get(i).is_some_and(Option::is_some);
                (QueueId(i), q.endpoint.clone(), routed)
            })
            .collect()
    }

    /// Queue the events `route` wants for its endpoint from the next batch on, making the
    /// endpoint a queue if it has none (an endpoint created while running). Its queue is
    /// marked draining: the caller starts its delivery.
    pub fn route(&self, route: QueueFilter) -> Result<QueueId, OutboxError> {
        let queue = self.queue_or_add(&route.endpoint)?;
        self.set_route(queue, Some(route));
        Ok(queue)
    }

    /// Queue nothing more for `endpoint` (deactivated, deleted, or gone from the file); what
    /// its queue holds is kept. False if it has no queue.
    pub fn unroute(&self, endpoint: &str) -> bool {
        match self.queue(endpoint) {
            Some(queue) => {
                self.set_route(queue, None);
                true
            }
            None => false,
        }
    }

    pub(super) fn set_route(&self, queue: QueueId, route: Option<QueueFilter>) {
        let mut routes = write(&self.routes);
        let mut new = Vec::clone(&routes);
        if new.len() <= queue.0 {
            new.resize(queue.0 + 1, None);
        }
        new[queue.0] = route;
        *routes = Arc::new(new);
    }

    /// The queue of `endpoint`, opened now if it has none.
    pub(super) fn queue_or_add(&self, endpoint: &str) -> Result<QueueId, OutboxError> {
        if let Some(queue) = self.queue(endpoint) {
            return Ok(queue);
        }
        // The store's lock first, then the queues' (as everywhere), so that a reopen, which
        // opens the store's trees from the queues' names, sees both or neither.
        let mut guard = self.store.write().unwrap_or_else(|e| e.into_inner());
        let store = guard.as_mut().ok_or(OutboxError::Unavailable)?;
        let mut queues = write(&self.queues);
        if let Some(i) = queues.iter().position(|q| q.endpoint == endpoint) {
            return Ok(QueueId(i));
        }
        store.add_queue(endpoint)?;
        let dropped = store
            .meta
            .get(meta_key(endpoint, DROPPED))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or(0);
        queues.push(Arc::new(Queue {
            endpoint: endpoint.to_string(),
            depth: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            dropped: AtomicU64::new(dropped),
            appended: Notify::new(),
        }));
        Ok(QueueId(queues.len() - 1))
    }

    /// One queue.
    pub(super) fn q(&self, queue: QueueId) -> Arc<Queue> {
        read(&self.queues)[queue.0].clone()
    }

    /// Every queue, as they are now.
    pub(super) fn all_queues(&self) -> Vec<Arc<Queue>> {
        read(&self.queues).clone()
    }

    pub(super) fn queue_count(&self) -> usize {
        read(&self.queues).len()
    }

    /// The routes, as they are now.
    pub(super) fn routes_now(&self) -> Arc<Vec<Option<QueueFilter>>> {
        read(&self.routes).clone()
    }

    /// Bytes of the records waiting in `queue`.
    pub fn queue_bytes(&self, queue: QueueId) -> u64 {
        self.q(queue).bytes.load(Ordering::Relaxed)
    }

    /// Say whether delivery takes records out of `queue` (false while its endpoint is
    /// disabled); a queue that does not drain never holds the others back when full.
    pub fn set_draining(&self, queue: QueueId, draining: bool) {
        self.q(queue).draining.store(draining, Ordering::Relaxed);
    }

    pub fn is_draining(&self, queue: QueueId) -> bool {
        self.q(queue).draining.load(Ordering::Relaxed)
    }

    /// Events `queue` will never get because its share was full, ever (see [`DROPPED`]).
    pub fn dropped_for(&self, queue: QueueId) -> u64 {
        self.q(queue).dropped.load(Ordering::Relaxed)
    }

    /// Records waiting for delivery, in all queues.
    pub fn len(&self) -> usize {
        self.all_queues()
            .iter()
            .map(|q| q.depth.load(Ordering::Relaxed) as usize)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records waiting in `queue`.
    pub fn queue_len(&self, queue: QueueId) -> usize {
        self.q(queue).depth.load(Ordering::Relaxed) as usize
    }

    /// Bytes of the records waiting, in all queues.
    pub fn bytes(&self) -> u64 {
        self.all_queues()
            .iter()
            .map(|q| q.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Resolves after the next durable append to `queue` (or at once if there was one since
    /// the last call).
    pub async fn appended(&self, queue: QueueId) {
        let q = self.q(queue);
        q.appended.notified().await
    }

    /// Wake the delivery of every queue: new records are durable.
    pub(super) fn notify_appended(&self) {
        for q in self.all_queues() {
            q.appended.notify_one();
        }
    }
}
