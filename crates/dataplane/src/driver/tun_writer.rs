//! Writes into endpoints' TUN devices: packets queued per endpoint and TUN
//! queue, and written with one coalescing (GRO) `send_multiple` each.

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::{Snapshot, TUN_WRITE_CAPACITY};
use crate::core::{Counters, DropReason, EndpointId, SourceNat};

/// Which counter a successful TUN write adds to.
#[derive(Clone, Copy)]
pub(super) enum Delivery {
    Local,
    Decapsulated,
}

impl Delivery {
    /// Counts `packets` packets of `bytes` bytes written.
    pub(super) fn count(self, counters: &Counters, packets: u64, bytes: u64) {
        match self {
            Delivery::Local => counters.delivered_locally(packets, bytes),
            Delivery::Decapsulated => counters.decapsulated(packets, bytes),
        }
    }
}

/// An endpoint and one of its TUN queues.
type QueueKey = (EndpointId, usize);

/// Packets queued per destination endpoint and queue, written with one
/// coalescing `send_multiple` per group. Buffers are recycled.
#[derive(Default)]
pub(super) struct TunWriter {
    groups: Vec<(QueueKey, Vec<Vec<u8>>)>,
    active: usize,
    queued: usize,
    spare: Vec<Vec<u8>>,
    gro: GROTable,
}

impl TunWriter {
    /// Queues a copy of `packet` for endpoint `to`, with `nat` applied to
    /// the copy, behind the packets of `to`'s queue that its flow takes in
    /// `snapshot`; `false` (nothing queued) if `nat` does not fit it. With
    /// `fill_tcp`, a TCP packet's checksum is computed first: a sender may
    /// have left it partial (see [`crate::offload`]), and both the NAT's
    /// update and the coalescing need it whole.
    pub(super) fn push(
        &mut self,
        snapshot: &Snapshot,
        to: EndpointId,
        packet: &[u8],
        nat: Option<SourceNat>,
        fill_tcp: bool,
    ) -> bool {
        let mut buf = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(TUN_WRITE_CAPACITY));
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(packet);
        if fill_tcp {
            crate::offload::fill_tcp4_checksum(&mut buf[VIRTIO_NET_HDR_LEN..]);
        }
        if let Some(nat) = nat
            && nat.apply(&mut buf[VIRTIO_NET_HDR_LEN..]).is_err()
        {
            self.spare.push(buf);
            return false;
        }
        let key = (to, snapshot.queue_of(to, &buf[VIRTIO_NET_HDR_LEN..]));
        let group = match self.groups[..self.active].iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                if self.active == self.groups.len() {
                    self.groups.push((key, Vec::new()));
                }
                self.groups[self.active].0 = key;
                self.active += 1;
                self.active - 1
            }
        };
        self.groups[group].1.push(buf);
        self.queued += 1;
        true
    }

    pub(super) fn is_full(&self) -> bool {
        self.queued >= IDEAL_BATCH_SIZE
    }

    pub(super) async fn flush(&mut self, snapshot: &Snapshot, counters: &Counters, delivery: Delivery) {
        for ((to, queue), bufs) in &mut self.groups[..self.active] {
            let n = bufs.len() as u64;
            let bytes: usize = bufs.iter().map(|b| b.len() - VIRTIO_NET_HDR_LEN).sum();
            match snapshot.queue(*to, *queue) {
                Some(device) => match device.send_multiple(&mut self.gro, bufs, VIRTIO_NET_HDR_LEN).await {
                    Ok(_) => delivery.count(counters, n, bytes as u64),
                    Err(e) => {
                        tracing::debug!(endpoint = %to, error = %e, "TUN write failed");
                        counters.drop(DropReason::TunWriteFailed, n);
                    }
                },
                None => counters.drop(DropReason::UnknownEndpoint, n),
            }
            self.spare.append(bufs);
        }
        self.active = 0;
        self.queued = 0;
    }
}
