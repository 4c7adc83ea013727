//! [`Buffer`]: one stream's queue of buffered messages, sized for the common case.
//!
//! Most of a million streams hold zero or one message, so those two cases cost no allocation
//! of their own: the message sits inline in the stream's record. A second message moves the
//! queue to a `VecDeque`, which is freed once a burst drains.

use std::collections::VecDeque;

use crate::message::Message;

/// Slots a drained queue keeps allocated; a larger one is freed.
const RETAINED: usize = 16;

/// What one message held by the engine counts against its memory budget
/// ([`EngineConfig::max_buffered_bytes`](super::EngineConfig::max_buffered_bytes)): its
/// payload and id, and the record that holds them.
pub(super) fn charge(message: &Message) -> usize {
    std::mem::size_of::<Message>() + message.id().as_str().len() + message.payload().len()
}

/// A FIFO of messages: empty, one inline message, or a heap queue with the sum of its
/// messages' [`charge`]s.
#[derive(Debug, Default)]
pub(super) enum Buffer {
    #[default]
    Empty,
    One(Message),
    Many(VecDeque<Message>, usize),
}

impl Buffer {
    pub(super) fn len(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(_) => 1,
            Buffer::Many(queue, _) => queue.len(),
        }
    }

    /// The sum of the buffered messages' [`charge`]s.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(message) => charge(message),
            Buffer::Many(_, bytes) => *bytes,
        }
    }

    /// The sum of the [`charge`]s of the `n` oldest messages.
    pub(super) fn oldest_bytes(&self, n: usize) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(message) => {
                if n > 0 {
                    charge(message)
                } else {
                    0
                }
            }
            Buffer::Many(queue, _) => queue.iter().take(n).map(charge).sum(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a message of `id` is buffered.
    pub(super) fn holds(&self, id: &crate::id::MessageId) -> bool {
        match self {
            Buffer::Empty => false,
            Buffer::One(message) => message.id() == id,
            Buffer::Many(queue, _) => queue.iter().any(|m| m.id() == id),
        }
    }

    pub(super) fn push_back(&mut self, message: Message) {
        match self {
            Buffer::Empty => *self = Buffer::One(message),
            Buffer::One(_) => {
                let Buffer::One(first) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                let bytes = charge(&first) + charge(&message);
                *self = Buffer::Many(VecDeque::from([first, message]), bytes);
            }
            Buffer::Many(queue, bytes) => {
                *bytes += charge(&message);
                queue.push_back(message);
            }
        }
    }

    pub(super) fn push_front(&mut self, message: Message) {
        match self {
            Buffer::Empty => *self = Buffer::One(message),
            Buffer::One(_) => {
                let Buffer::One(second) = std::mem::take(self) else {
                    unreachable!("matched One")
                };
                let bytes = charge(&message) + charge(&second);
                *self = Buffer::Many(VecDeque::from([message, second]), bytes);
            }
            Buffer::Many(queue, bytes) => {
                *bytes += charge(&message);
                queue.push_front(message);
            }
        }
    }

    pub(super) fn pop_front(&mut self) -> Option<Message> {
        match self {
            Buffer::Empty => None,
            Buffer::One(_) => match std::mem::take(self) {
                Buffer::One(message) => Some(message),
                _ => unreachable!("matched One"),
            },
            Buffer::Many(queue, bytes) => {
                let message = queue.pop_front();
                if let Some(message) = &message {
                    *bytes -= charge(message);
                }
                if queue.is_empty() && queue.capacity() > RETAINED {
                    // A burst is over: give its memory back.
                    *self = Buffer::Empty;
                }
                message
            }
        }
    }

    /// Messages the buffer has room for without allocating.
    #[cfg(test)]
    pub(super) fn allocated(&self) -> usize {
        match self {
            Buffer::Empty => 0,
            Buffer::One(_) => 1,
            Buffer::Many(queue, _) => queue.capacity(),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::id::MessageId;
    use crate::time::Timestamp;

    fn msg(id: usize) -> Message {
        Message::new(
            MessageId::new(id.to_string()).expect("id"),
            Bytes::from_static(b"1"),
            Timestamp::from_micros(0),
        )
    }

    fn ids(buffer: &mut Buffer) -> Vec<String> {
        std::iter::from_fn(|| buffer.pop_front())
            .map(|m| m.id().as_str().to_owned())
            .collect()
    }

    #[test]
    fn keeps_fifo_order_across_its_three_shapes() {
        let mut b = Buffer::default();
        assert_eq!((b.len(), b.pop_front().is_none()), (0, true));
        b.push_back(msg(1));
        assert!(matches!(b, Buffer::One(_)));
        b.push_back(msg(2));
        b.push_front(msg(0));
        b.push_back(msg(3));
        assert_eq!(b.len(), 4);
        assert_eq!(ids(&mut b), ["0", "1", "2", "3"]);
        b.push_front(msg(5));
        b.push_front(msg(4));
        assert_eq!(ids(&mut b), ["4", "5"]);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let mut b = Buffer::default();
        for i in 0..1000 {
            b.push_back(msg(i));
        }
        assert!(b.allocated() >= 1000);
        assert_eq!(ids(&mut b).len(), 1000);
        assert_eq!(b.allocated(), 0);
        // A small queue keeps its slots for the next messages.
        b.push_back(msg(1));
        b.push_back(msg(2));
        assert_eq!(ids(&mut b).len(), 2);
        assert!(matches!(b, Buffer::Many(..)));
    }

    #[test]
    fn counts_the_bytes_it_holds_in_every_shape() {
        let mut b = Buffer::default();
        let one = charge(&msg(1));
        assert!(one > std::mem::size_of::<Message>());
        for n in 1..=20 {
            b.push_back(msg(1));
            assert_eq!(b.bytes(), n * one);
        }
        b.push_front(msg(1));
        assert_eq!(b.oldest_bytes(3), 3 * one);
        while b.pop_front().is_some() {
            assert_eq!(b.bytes(), b.len() * one);
        }
        assert_eq!(b.bytes(), 0);
        b.push_front(msg(1));
        assert_eq!(
            (b.bytes(), b.oldest_bytes(1), b.oldest_bytes(0)),
            (one, one, 0)
        );
    }

    #[test]
    fn holds_one_message_inline() {
        // The record of an idle stream with one message must not grow past a message.
        assert!(std::mem::size_of::<Buffer>() <= std::mem::size_of::<Message>() + 8);
    }
}
