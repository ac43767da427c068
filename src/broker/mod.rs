//! RabbitMQ: the supervised server ([`server`]), the AMQP topology, and typed publishing and
//! consuming of the [`messages`].
//!
//! Topology (declared by the orchestrator, in the cluster's vhost):
//! - exchange `kraken.up` (direct) → queues `sysinfo`, `events`, `logs` (routing key = queue)
//! - exchange `kraken.work` (direct) → queue `work.<node>` per node (routing key = node id)
//! - exchange `kraken.dead` (fanout) → queue `dead-letter`: every queue dead-letters there,
//!   so a message a consumer cannot decode is rejected once, kept, and never redelivered.
//!
//! Node users may only publish to `kraken.up` and read their own `work.<node>` queue.

pub mod messages;
pub mod server;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use messages::Message;
use std::marker::PhantomData;

pub const UP_EXCHANGE: &str = "kraken.up";
pub const WORK_EXCHANGE: &str = "kraken.work";
pub const DEAD_EXCHANGE: &str = "kraken.dead";
pub const DEAD_LETTER_QUEUE: &str = "dead-letter";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("amqp: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused message for {queue}")]
    Nacked { queue: String },
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("rabbitmq-server: {0}")]
    Server(String),
    #[error("no answer from the broker within {0} s")]
    Timeout(u64),
}

/// Longest wait for the broker to take a message; a connection to a peer that vanished can
/// leave a confirm unanswered, and the sender must not wait on it forever.
const CONFIRM_TIMEOUT_SECS: u64 = 15;

/// The queue a node's work requests arrive on.
pub fn work_queue(node: &str) -> String {
    format!("work.{node}")
}

/// An AMQP connection with a publisher-confirm channel.
pub struct Broker {
    conn: Connection,
    publish: Channel,
}

/// The largest AMQP frame we ask for. lapin keeps 32 frames of buffer in each direction, so
/// RabbitMQ's default of 128 KiB would cost 8 MiB of memory per connection; with 16 KiB it
/// is 1 MiB, and bigger messages simply travel in more frames.
const FRAME_MAX: u32 = 16 * 1024;

/// AMQP heartbeat, seconds: a connection to a peer that vanished (a pulled cable, a new
/// address) is noticed within two of them.
const HEARTBEAT_SECS: u16 = 5;

/// `url` with our `frame_max` and `heartbeat`, unless it names them itself.
fn with_tuning(url: &str) -> String {
    let mut url = url.to_owned();
    for (key, value) in [
        ("frame_max", FRAME_MAX.to_string()),
        ("heartbeat", HEARTBEAT_SECS.to_string()),
    ] {
        if !url.contains(&format!("{key}=")) {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{key}={value}");
        }
    }
    url
}

impl Broker {
    /// Connects to `url` (`amqp://user:pass@host:port/vhost`).
    pub async fn connect(url: &str, name: &str) -> Result<Self, BrokerError> {
        let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
        let conn = Connection::connect(&with_tuning(url), props).await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { conn, publish })
    }

    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Closes the connection politely; a peer that no longer answers (gone, or at another
    /// address now) is not waited for.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            self.conn.close(200, "bye".into()),
        )
        .await;
    }

    /// Declares the cluster-wide exchanges and queues (orchestrator only).
    pub async fn declare_topology(&self) -> Result<(), BrokerError> {
        let ch = &self.publish;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            UP_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            WORK_EXCHANGE.into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            DEAD_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-max-length".into(), AMQPValue::LongLongInt(10_000));
        ch.queue_declare(DEAD_LETTER_QUEUE.into(), durable_queue(), dead_args)
            .await?;
        ch.queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for (queue, ttl_ms) in [
            (messages::Heartbeat::QUEUE, Some(10_000)),
            (messages::JobEvent::QUEUE, None),
            (messages::LogBatch::QUEUE, None),
            (messages::DeployEvent::QUEUE, None),
        ] {
            let mut args = dead_lettered();
            if let Some(ttl) = ttl_ms {
                // a heartbeat older than this says nothing about the node's present
                args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            }
            ch.queue_declare(queue.into(), durable_queue(), args)
                .await?;
            ch.queue_bind(
                queue.into(),
                UP_EXCHANGE.into(),
                queue.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        }
        Ok(())
    }

    /// Declares the work queue of `node` (orchestrator only, at join).
    pub async fn declare_work_queue(&self, node: &str) -> Result<(), BrokerError> {
        let queue = work_queue(node);
        self.publish
            .queue_declare(queue.as_str().into(), durable_queue(), dead_lettered())
            .await?;
        self.publish
            .queue_bind(
                queue.into(),
                WORK_EXCHANGE.into(),
                node.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Drops every message waiting in the work queue of `node` (a new orchestrator's
    /// broker may hold work requests from an earlier term; the store decides what runs).
    pub async fn purge_work_queue(&self, node: &str) -> Result<u32, BrokerError> {
        Ok(self
            .publish
            .queue_purge(work_queue(node).into(), Default::default())
            .await?)
    }

    /// Publishes `msg` and waits for the broker's confirm. `routing_key` defaults to the
    /// message's queue (work requests pass the node id).
    pub async fn publish<T: Message>(
        &self,
        msg: &T,
        routing_key: Option<&str>,
    ) -> Result<(), BrokerError> {
        self.send(msg, routing_key).await?.confirmed().await
    }

    /// Publishes `msg` without waiting for the confirm, so many messages can be in flight;
    /// the message counts as sent only once [`Pending::confirmed`] says so.
    pub async fn send<T: Message>(
        &self,
        msg: &T,
        routing_key: Option<&str>,
    ) -> Result<Pending, BrokerError> {
        let body = serde_json::to_vec(msg)?;
        let mut props = BasicProperties::default().with_content_type("application/json".into());
        if T::PERSISTENT {
            props = props.with_delivery_mode(2);
        }
        let key = routing_key.unwrap_or(T::QUEUE);
        let publishing = self.publish.basic_publish(
            T::EXCHANGE.into(),
            key.into(),
            BasicPublishOptions::default(),
            &body,
            props,
        );
        let wait = std::time::Duration::from_secs(CONFIRM_TIMEOUT_SECS);
        let confirm = tokio::time::timeout(wait, publishing)
            .await
            .map_err(|_| BrokerError::Timeout(CONFIRM_TIMEOUT_SECS))??;
        Ok(Pending {
            confirm,
            queue: key.to_owned(),
        })
    }

    /// Starts consuming `queue` as messages of type `T`, on a channel of its own with
    /// `prefetch` unacknowledged messages at most.
    pub async fn consume<T: Message>(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> Result<TypedConsumer<T>, BrokerError> {
        let channel = self.conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(TypedConsumer {
            queue: queue.to_owned(),
            _channel: channel,
            consumer,
            _type: PhantomData,
        })
    }

    /// Messages waiting in `queue`, or None when it cannot be asked.
    pub async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let ch = self.conn.create_channel().await.ok()?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = ch.close(200, "".into()).await;
        Some(q.message_count())
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn dead_lettered() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_EXCHANGE.into()),
    );
    args
}

/// A published message awaiting the broker's confirm.
pub struct Pending {
    confirm: lapin::PublisherConfirm,
    queue: String,
}

impl Pending {
    /// Waits until the broker has taken the message (or refused it).
    pub async fn confirmed(self) -> Result<(), BrokerError> {
        let wait = std::time::Duration::from_secs(CONFIRM_TIMEOUT_SECS);
        let confirm = tokio::time::timeout(wait, self.confirm)
            .await
            .map_err(|_| BrokerError::Timeout(CONFIRM_TIMEOUT_SECS))?;
        if confirm?.is_nack() {
            return Err(BrokerError::Nacked { queue: self.queue });
        }
        Ok(())
    }
}

/// A consumer yielding decoded messages. Undecodable ones are logged and rejected without
/// requeue, which dead-letters them; they never stop the consumer.
pub struct TypedConsumer<T> {
    queue: String,
    _channel: Channel,
    consumer: lapin::Consumer,
    _type: PhantomData<T>,
}

/// A decoded message; [`Delivered::ack`] it once it has been handled.
pub struct Delivered<T> {
    pub msg: T,
    acker: lapin::Acker,
}

impl<T> Delivered<T> {
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }
}

impl<T: Message> TypedConsumer<T> {
    /// Waits for one message, then takes those already delivered behind it, up to `max`;
    /// handlers use it to make one store flush cover a whole batch before acking it.
    /// Empty when the connection is gone.
    pub async fn next_batch(&mut self, max: usize) -> Vec<Delivered<T>> {
        use futures::FutureExt;
        let mut batch = Vec::new();
        let Some(first) = self.next().await else {
            return batch;
        };
        batch.push(first);
        while batch.len() < max {
            match self.next().now_or_never() {
                Some(Some(d)) => batch.push(d),
                _ => break,
            }
        }
        batch
    }

    /// The next decoded message; `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<Delivered<T>> {
        loop {
            let delivery = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(error) => {
                    tracing::warn!(%error, queue = %self.queue, "consumer stopped");
                    return None;
                }
            };
            match serde_json::from_slice::<T>(&delivery.data) {
                Ok(msg) => {
                    return Some(Delivered {
                        msg,
                        acker: delivery.acker,
                    })
                }
                Err(error) => {
                    let preview =
                        String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(120)])
                            .into_owned();
                    tracing::warn!(%error, queue = %self.queue, %preview, "undecodable message sent to the dead-letter queue");
                    if let Err(error) = delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await
                    {
                        tracing::warn!(%error, queue = %self.queue, "reject failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_max_and_heartbeat_are_asked_for_unless_given() {
        assert_eq!(
            with_tuning("amqp://u:p@h:5672/%2Fv"),
            "amqp://u:p@h:5672/%2Fv?frame_max=16384&heartbeat=5"
        );
        assert_eq!(
            with_tuning("amqp://h/v?heartbeat=10"),
            "amqp://h/v?heartbeat=10&frame_max=16384"
        );
        assert_eq!(
            with_tuning("amqp://h/v?frame_max=4096"),
            "amqp://h/v?frame_max=4096&heartbeat=5"
        );
    }
}
