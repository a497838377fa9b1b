//! Dropping packets between namespaces with nftables: each cut is one table of its own inside
//! one namespace (built with the `nftables` crate's typed JSON, applied by `nft` run in that
//! namespace), so removing the cut removes exactly its rules and nothing another cut added.
use std::borrow::Cow;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField};
use nftables::schema::{Chain, NfListObject, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use crate::{Error, Result};

/// Prefix of every table a [`Cut`] makes.
const TABLE_PREFIX: &str = "shoal_cut_";

/// Packets dropped inside one namespace: those arriving from some addresses and those leaving
/// for others. Stays until [`Cut::remove`] (or until the namespace is deleted).
#[derive(Debug)]
pub struct Cut {
    netns: String,
    table: String,
}

impl Cut {
    /// Inside namespace `netns`, drops every IPv4 packet from an address of `inbound_from` and
    /// every one to an address of `outbound_to`.
    pub fn install(
        netns: &str,
        inbound_from: &[Ipv4Addr],
        outbound_to: &[Ipv4Addr],
    ) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let table = format!(
            "{TABLE_PREFIX}{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut batch = Batch::new();
        batch.add(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: Cow::Owned(table.clone()),
            handle: None,
        }));
        for (chain, hook, field, addresses) in [
            ("input", NfHook::Input, "saddr", inbound_from),
            ("output", NfHook::Output, "daddr", outbound_to),
        ] {
            batch.add(NfListObject::Chain(base_chain(&table, chain, hook)));
            for address in addresses {
                batch.add(NfListObject::Rule(drop_rule(
                    &table, chain, field, *address,
                )));
            }
        }
        apply(netns, &batch.to_nftables())?;
        Ok(Cut {
            netns: netns.to_string(),
            table,
        })
    }

    /// The namespace the cut is in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Deletes the cut's table, and with it every rule it added.
    pub fn remove(self) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(NfListObject::Table(Table {
            family: NfFamily::INet,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        }));
        apply(&self.netns, &batch.to_nftables())
    }
}

/// A filter chain on `hook` that accepts what no rule drops.
fn base_chain(table: &str, name: &str, hook: NfHook) -> Chain<'static> {
    Chain {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_string()),
        name: Cow::Owned(name.to_string()),
        newname: None,
        handle: None,
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(0),
        dev: None,
        policy: Some(NfChainPolicy::Accept),
    }
}

/// `ip <field> <address> drop`.
fn drop_rule(table: &str, chain: &str, field: &str, address: Ipv4Addr) -> Rule<'static> {
    let matches = Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: Cow::Borrowed("ip"),
                field: Cow::Owned(field.to_string()),
            },
        ))),
        right: Expression::String(Cow::Owned(address.to_string())),
        op: Operator::EQ,
    });
    Rule {
        family: NfFamily::INet,
        table: Cow::Owned(table.to_string()),
        chain: Cow::Owned(chain.to_string()),
        expr: Cow::Owned(vec![matches, Statement::Drop(None)]),
        handle: None,
        index: None,
        comment: None,
    }
}

/// Applies `ruleset` with `nft` inside namespace `netns`.
fn apply(netns: &str, ruleset: &nftables::schema::Nftables<'_>) -> Result<()> {
    let args = ["netns", "exec", netns, "nft"];
    nftables::helper::apply_ruleset_with_args(ruleset, Some("ip"), args.iter())
        .map_err(|err| Error::Firewall(format!("in namespace {netns}: {err}")))
}
