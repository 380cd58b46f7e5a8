//! Policy scaling: generated policies of any size, and the cost of a decision and of compiling
//! a policy as the rule count grows.

use std::{sync::Arc, time::Instant};

use super::CUSTOMER_FIELDS;
use crate::{
    domain::{Principal, Role, Schema, Subject},
    policy::PolicyEngine,
};

/// A policy of `rules` rules over the customers schema (plus the shipped roles' rules), for
/// measuring how decisions and applies scale with the rule count.
pub fn generated_policy(rules: usize) -> String {
    let base = include_str!("../../policies/policy.csv");
    let purposes = [
        "account_management",
        "billing",
        "fraud_prevention",
        "legal",
        "marketing",
        "subject_access",
        "support",
    ];
    let mut out = base.to_owned();
    let base_rules = base
        .lines()
        .filter(|l| l.starts_with("p,") || l.starts_with("g,"))
        .count();
    let mut n = base_rules;
    let mut role = 0usize;
    'outer: loop {
        for (f, (field, _)) in CUSTOMER_FIELDS.iter().enumerate() {
            for (p, purpose) in purposes.iter().enumerate() {
                if n >= rules {
                    break 'outer;
                }
                let action = if (f + p + role).is_multiple_of(3) {
                    "read"
                } else {
                    "read_masked"
                };
                out.push_str(&format!(
                    "p, role:gen{role}, customers.{field}, {action}, {purpose}, allow\n"
                ));
                n += 1;
            }
        }
        if n < rules && !role.is_multiple_of(8) {
            out.push_str(&format!("g, role:gen{role}, role:gen{}\n", role - 1));
            n += 1;
        }
        role += 1;
    }
    out
}

/// Decision cost with the shipped policy and with a `big`-rule policy: (ns per 8-field
/// decision with the shipped policy, ns at `big`, seconds to compile and check the big policy).
///
/// # Errors
/// A message if a policy does not compile.
pub async fn decision_cost(
    policies: &std::path::Path,
    big: usize,
    iterations: u32,
) -> Result<(f64, f64, f64, usize), String> {
    let schema = Arc::new(
        Schema::parse(
            &std::fs::read_to_string(policies.join("schema.toml")).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?,
    );
    let model = std::fs::read_to_string(policies.join("model.conf")).map_err(|e| e.to_string())?;
    let principal = Principal::new(
        Subject::parse("svc:bench", "s").map_err(|e| e.to_string())?,
        vec![Role::parse("role:support", "r").map_err(|e| e.to_string())?],
    );
    let coll = schema
        .collection("customers", "c")
        .map_err(|e| e.to_string())?
        .clone();
    let (_, purpose) = schema.purpose("support", "p").map_err(|e| e.to_string())?;
    let fields: Vec<usize> = (0..coll.fields().len()).collect();
    let mut out = Vec::new();
    let mut apply_secs = 0.0;
    let mut big_rules = 0;
    let (small, large) = (generated_policy(0), generated_policy(big));
    // Each size twice, alternating, the better of each kept: the order must not decide.
    for text in [&small, &large, &small, &large] {
        let start = Instant::now();
        let engine = PolicyEngine::new(
            Arc::clone(&schema),
            model.clone(),
            text,
            1,
            vec![principal.clone()],
        )
        .await
        .map_err(|e| e.to_string())?;
        apply_secs = start.elapsed().as_secs_f64();
        big_rules = engine.text().rule_count();
        let table = engine.table();
        let mut plain = 0usize;
        // Warm the caches and the allocator first: the first table measured must not pay it.
        for _ in 0..iterations / 4 {
            plain += table
                .decide_read(&principal, &coll, &fields, &purpose)
                .decisions()
                .len();
        }
        let start = Instant::now();
        for _ in 0..iterations {
            let permit = table.decide_read(&principal, &coll, &fields, &purpose);
            plain += permit.decisions().len();
        }
        std::hint::black_box(plain);
        out.push(start.elapsed().as_secs_f64() * 1e9 / f64::from(iterations));
    }
    Ok((
        out[0].min(out[2]),
        out[1].min(out[3]),
        apply_secs,
        big_rules,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_policies_have_the_asked_rule_count() {
        for n in [100, 500] {
            let text = generated_policy(n);
            let rules = text
                .lines()
                .filter(|l| l.starts_with("p,") || l.starts_with("g,"))
                .count();
            assert_eq!(rules, n);
        }
    }
}
