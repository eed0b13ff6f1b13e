//! Sends keyed records through the batching, idempotent `Producer` and prints where they went.
//!
//! ```text
//! runnel dev &                                   # a single node on 127.0.0.1:9292
//! cargo run -p runnel-client --example producer -- [bootstrap] [records]
//! ```

use std::collections::BTreeMap;

use runnel_client::{Client, Compression, ErrorCode, Producer, ProducerConfig, Record};

const TOPIC: &str = "examples";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let bootstrap = args.next().unwrap_or_else(|| "127.0.0.1:9292".to_string());
    let count: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1000);

    let client = Client::connect(&[bootstrap]).await?;
    // Three partitions, one replica (a `runnel dev` node is alone). Fine if it already exists.
    match client.create_topic(TOPIC, 3, 1, Default::default()).await {
        Ok(_) => println!("created topic '{TOPIC}'"),
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }

    // Idempotent by default: retries after a failover never duplicate a record.
    let config = ProducerConfig { compression: Compression::Lz4, ..ProducerConfig::default() };
    let producer = Producer::new(client, config).await?;
    println!("producer id/epoch: {:?}", producer.producer_id());

    // `send` only buffers (it waits when the buffer is full); the futures resolve on acknowledgement.
    let mut deliveries = Vec::new();
    for i in 0..count {
        let record = Record {
            key: format!("customer-{}", i % 10).into(),
            value: format!("order {i}").into(),
            ..Default::default()
        };
        deliveries.push(producer.send(TOPIC, record).await?);
    }
    let mut per_partition: BTreeMap<u32, (u64, u64, u64)> = BTreeMap::new();
    for d in deliveries {
        let m = d.await?;
        let e = per_partition.entry(m.partition).or_insert((u64::MAX, 0, 0));
        e.0 = e.0.min(m.offset);
        e.1 = e.1.max(m.offset);
        e.2 += 1;
    }
    for (p, (first, last, n)) in per_partition {
        println!("partition {p}: {n} records at offsets {first}..={last}");
    }
    println!("sent {count} records");
    Ok(())
}
