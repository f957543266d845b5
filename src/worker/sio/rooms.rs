//! The rooms of this worker's sockets and which sockets a broadcast reaches. Every socket is
//! also in the room named by its own id (as in Node); those rooms are not stored: a room
//! whose name is a connected socket's id has that socket as its member, which saves an
//! entry per socket. [`Rooms::select`] applies socketioxide-core's `BroadcastOptions` as its local
//! adapter does (rooms, except, the sender left out of a `broadcast`), so broadcasts from
//! other servers reach the same sockets they would under socketioxide or Node.

use std::collections::{HashMap, HashSet};
use std::sync::{PoisonError, RwLock};

use socketioxide_core::Sid;
use socketioxide_core::adapter::{BroadcastFlags, BroadcastOptions, Room};

/// Members of the rooms sockets joined (not their own rooms).
#[derive(Default)]
pub struct Rooms {
    members: RwLock<HashMap<Room, HashSet<Sid>>>,
}

impl Rooms {
    pub fn add(&self, id: Sid, room: Room) {
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        members.entry(room).or_default().insert(id);
    }

    pub fn remove(&self, id: Sid, room: &str) {
        let mut members = self.members.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(set) = members.get_mut(room) {
            set.remove(&id);
            if set.is_empty() {
                members.remove(room);
            }
        }
    }

    /// Names of the rooms with at least one member here (not the sockets' own rooms).
    pub fn names(&self) -> Vec<Room> {
        let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
        members.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.members.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether a socket here is in the joined room `room`.
    pub fn has(&self, room: &str) -> bool {
        let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
        members.contains_key(room)
    }

    /// The sockets `opts` selects (socketioxide-core's `apply_opts`); `socket` says
    /// whether an id is a socket connected here, `all` lists every connected socket. They
    /// are called with no lock of this index held.
    pub fn select(
        &self,
        opts: &BroadcastOptions,
        socket: impl Fn(Sid) -> bool,
        all: impl FnOnce() -> Vec<Sid>,
    ) -> Vec<Sid> {
        let (mut chosen, mut except) = (HashSet::new(), HashSet::new());
        {
            let members = self.members.read().unwrap_or_else(PoisonError::into_inner);
            for (rooms, out) in [(&opts.rooms, &mut chosen), (&opts.except, &mut except)] {
                for set in rooms.iter().filter_map(|r| members.get(r)) {
                    out.extend(set.iter().copied());
                }
            }
        }
        for (rooms, out) in [(&opts.rooms, &mut chosen), (&opts.except, &mut except)] {
            let own = rooms.iter().filter_map(|r| r.parse::<Sid>().ok());
            out.extend(own.filter(|id| socket(*id)));
        }
        let broadcast = opts.has_flag(BroadcastFlags::Broadcast);
        if broadcast && let Some(sid) = opts.sid {
            except.insert(sid);
        }
        if !opts.rooms.is_empty() {
            chosen.retain(|id| !except.contains(id));
            chosen.into_iter().collect()
        } else if broadcast {
            let mut everyone = all();
            everyone.retain(|id| !except.contains(id));
            everyone
        } else {
            opts.sid.into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_options_select_as_socketioxide_does() {
        let mut ids: Vec<Sid> = (0..4).map(|_| Sid::new()).collect();
        ids.sort();
        let [a, b, c, gone] = [ids[0], ids[1], ids[2], ids[3]];
        let rooms = Rooms::default();
        for (id, room) in [
            (a, "r1"),
            (a, "r2"),
            (b, "r1"),
            (b, "r3"),
            (c, "r1"),
            (c, "r2"),
            (c, "r3"),
        ] {
            rooms.add(id, room.to_string().into());
        }
        let connected = [a, b, c];
        let pick = |opts: &BroadcastOptions| {
            let mut got = rooms.select(opts, |id| connected.contains(&id), || connected.to_vec());
            got.sort();
            got
        };
        let opts = |sid: Option<Sid>, broadcast: bool, to: &[&str], except: &[&str]| {
            let mut o = BroadcastOptions::default();
            o.sid = sid;
            if broadcast {
                o.add_flag(BroadcastFlags::Broadcast);
            }
            o.rooms = to.iter().map(|r| Room::Owned(r.to_string())).collect();
            o.except = except.iter().map(|r| Room::Owned(r.to_string())).collect();
            o
        };
        assert_eq!(
            pick(&opts(Some(c), false, &["r1"], &["r2"])),
            [b],
            "the socketioxide test's case"
        );
        assert_eq!(pick(&opts(Some(c), true, &[], &[])), [a, b], "everyone but the sender");
        assert_eq!(pick(&opts(Some(c), true, &[], &["r2"])), [b]);
        assert_eq!(pick(&opts(Some(c), false, &[], &[])), [c], "one socket");
        assert_eq!(pick(&opts(None, true, &["r3", "r2"], &[])), [a, b, c], "each once");
        assert_eq!(pick(&opts(None, false, &[], &[])), Vec::<Sid>::new());
        // Own rooms: a connected socket's id names a room with it alone.
        assert_eq!(pick(&opts(None, true, &[b.as_str()], &[])), [b]);
        assert_eq!(pick(&opts(None, true, &["r1"], &[a.as_str()])), [b, c]);
        assert_eq!(pick(&opts(None, true, &[gone.as_str()], &[])), Vec::<Sid>::new());

        rooms.remove(a, "r1");
        rooms.remove(b, "r1");
        rooms.remove(c, "r1");
        assert!(!rooms.has("r1"), "an empty room is forgotten");
        let mut names: Vec<String> = rooms.names().into_iter().map(String::from).collect();
        names.sort();
        assert_eq!(names, ["r2", "r3"]);
    }
}
