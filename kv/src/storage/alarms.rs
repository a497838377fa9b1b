//! etcd's alarms (its `alarm` bucket): which member raised which alarm. Replicated state, carried
//! in snapshots: an alarm raised survives restarts until someone disarms it. Deterministic and
//! without I/O, like [`super::mvcc`].
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::proto::etcdserverpb::{self as pb, AlarmType};

/// The active alarms as `(member ID, alarm type)`, in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarms(BTreeSet<(u64, i32)>);

/// A change to the alarms, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmCommand {
    Activate { member: u64, alarm: i32 },
    Deactivate { member: u64, alarm: i32 },
}

fn member(member: u64, alarm: i32) -> pb::AlarmMember {
    pb::AlarmMember {
        member_id: member,
        alarm,
    }
}

impl Alarms {
    /// Applies `command`; answers what etcd's alarm store answers: the alarm raised (also when it
    /// already was), or the one cleared (nothing when it was not raised).
    pub fn apply(&mut self, command: &AlarmCommand) -> Vec<pb::AlarmMember> {
        match *command {
            AlarmCommand::Activate { member: id, alarm } => {
                self.0.insert((id, alarm));
                vec![member(id, alarm)]
            }
            AlarmCommand::Deactivate { member: id, alarm } => {
                if self.0.remove(&(id, alarm)) {
                    vec![member(id, alarm)]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The active alarms of type `alarm`; `NONE` is every alarm (etcd's `AlarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<pb::AlarmMember> {
        self.0
            .iter()
            .filter(|(_, a)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(id, a)| member(id, a))
            .collect()
    }

    /// Whether a NOSPACE alarm is active: writes that take space are refused.
    pub fn no_space(&self) -> bool {
        self.0.iter().any(|(_, a)| *a == AlarmType::Nospace as i32)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An alarm as etcd 3.4 prints one (gogoproto's compact text, as in Status' `errors`).
pub fn describe(alarm: &pb::AlarmMember) -> String {
    let name = AlarmType::try_from(alarm.alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| alarm.alarm.to_string());
    format!("memberID:{} alarm:{name} ", alarm.member_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOSPACE: i32 = AlarmType::Nospace as i32;
    const CORRUPT: i32 = AlarmType::Corrupt as i32;

    #[test]
    fn alarms_are_raised_listed_and_cleared_per_member_as_in_etcd() {
        let mut alarms = Alarms::default();
        assert!(!alarms.no_space());
        let raised = alarms.apply(&AlarmCommand::Activate {
            member: 7,
            alarm: NOSPACE,
        });
        assert_eq!(raised, vec![member(7, NOSPACE)]);
        assert_eq!(
            alarms.apply(&AlarmCommand::Activate {
                member: 7,
                alarm: NOSPACE
            }),
            vec![member(7, NOSPACE)],
            "raising it again answers the alarm, as etcd does"
        );
        alarms.apply(&AlarmCommand::Activate {
            member: 9,
            alarm: CORRUPT,
        });
        assert!(alarms.no_space());
        assert_eq!(alarms.get(AlarmType::None as i32).len(), 2);
        assert_eq!(alarms.get(NOSPACE), vec![member(7, NOSPACE)]);
        assert_eq!(
            alarms.apply(&AlarmCommand::Deactivate {
                member: 9,
                alarm: NOSPACE
            }),
            Vec::new(),
            "another member's alarm is not cleared"
        );
        alarms.apply(&AlarmCommand::Deactivate {
            member: 7,
            alarm: NOSPACE,
        });
        assert!(!alarms.no_space());
        assert_eq!(describe(&member(7, NOSPACE)), "memberID:7 alarm:NOSPACE ");
    }
}
