//! The reviewer's estimate of a held statement: the gateway runs `EXPLAIN (FORMAT JSON)`
//! (never `ANALYZE`: nothing executes) on one of its reserved connections
//! (`engine::side`) and reads the plan's top node and row estimate. Pure: building the
//! statement and reading the plan.

use serde_json::Value;

use super::model::Estimate;

/// The `EXPLAIN` of one explainable statement (the gate decided it is one statement
/// that reads or writes rows).
pub fn explain_sql(sql: &str) -> String {
    format!("EXPLAIN (FORMAT JSON) {sql}")
}

/// Reads the plan PostgreSQL returns. For a write the top node is the modification
/// (`ModifyTable`, which estimates the rows it returns, usually 0); the rows it would
/// touch are its input's estimate, so that is the one shown.
pub fn read_plan(json: &str) -> Estimate {
    let unavailable = |why: &str| Estimate {
        rows: None,
        node: None,
        unavailable: Some(why.into()),
    };
    let Ok(v) = serde_json::from_str::<Value>(json) else {
        return unavailable("the plan was not JSON");
    };
    let Some(plan) = v.get(0).and_then(|p| p.get("Plan")) else {
        return unavailable("the plan had no top node");
    };
    let node = plan.get("Node Type").and_then(Value::as_str);
    let rows_of = |p: &Value| p.get("Plan Rows").and_then(Value::as_f64);
    let rows = if node == Some("ModifyTable") {
        plan.get("Plans")
            .and_then(|c| c.get(0))
            .and_then(rows_of)
            .or_else(|| rows_of(plan))
    } else {
        rows_of(plan)
    };
    let node = match (node, plan.get("Operation").and_then(Value::as_str)) {
        (Some("ModifyTable"), Some(op)) => Some(format!(
            "{op} on {}",
            plan.get("Relation Name")
                .and_then(Value::as_str)
                .unwrap_or("?")
        )),
        (Some(n), _) => Some(n.to_owned()),
        (None, _) => None,
    };
    Estimate {
        rows,
        node,
        unavailable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_shows_the_rows_its_input_estimates() {
        let plan = r#"[{"Plan": {"Node Type": "ModifyTable", "Operation": "Delete", "Relation Name": "accounts", "Plan Rows": 0,
            "Plans": [{"Node Type": "Seq Scan", "Plan Rows": 200000}]}}]"#;
        let e = read_plan(plan);
        assert_eq!(e.rows, Some(200000.0));
        assert_eq!(e.node.as_deref(), Some("Delete on accounts"));
        let e = read_plan(r#"[{"Plan": {"Node Type": "Seq Scan", "Plan Rows": 12}}]"#);
        assert_eq!((e.rows, e.node.as_deref()), (Some(12.0), Some("Seq Scan")));
        assert!(read_plan("nope").unavailable.is_some());
    }
}
