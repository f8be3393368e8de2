//! Expressions over fake group values, each expected result checked
//! against PostgreSQL 15.

use super::*;
use crate::key::Key;
use crate::numeric::Numeric;
use crate::oid;

fn op(op: Op, args: Vec<Node>, probe: usize) -> Node {
    Node::Op {
        op,
        args,
        probe: Some(probe),
    }
}

fn pred(op: Op, args: Vec<Node>) -> Node {
    Node::Op {
        op,
        args,
        probe: None,
    }
}

fn num(s: &str) -> Node {
    Node::Const(Literal::Number(s.into()))
}

fn text(s: &str) -> Node {
    Node::Const(Literal::Text(s.into()))
}

fn n(s: &str) -> Key {
    Key::Numeric(Numeric::parse_text(s).unwrap())
}

/// Evaluates `node` with inputs of the given types and values; probes in order.
fn run(node: &Node, inputs: &[(u32, Key)], probes: &[u32]) -> Result<String, MergeError> {
    let types: Vec<u32> = inputs.iter().map(|(t, _)| *t).collect();
    let values: Vec<Key> = inputs.iter().map(|(_, v)| v.clone()).collect();
    let bound = node.bind(&types, probes)?;
    let v = bound.eval(&values)?;
    Ok(match encode_value(&v, bound.type_oid(), 0)? {
        None => "NULL".into(),
        Some(b) => String::from_utf8(b.to_vec()).unwrap(),
    })
}

use crate::error::MergeError;

#[test]
fn integer_division_truncates_and_checks_range() {
    let div = op(Op::Div, vec![Node::Input(0), Node::Input(1)], 0);
    let ints = |a, b| [(oid::INT4, Key::Int(a)), (oid::INT4, Key::Int(b))];
    assert_eq!(run(&div, &ints(7, 2), &[oid::INT4]).unwrap(), "3");
    assert_eq!(run(&div, &ints(-7, 2), &[oid::INT4]).unwrap(), "-3");
    let e = run(&div, &ints(1, 0), &[oid::INT4]).unwrap_err();
    assert_eq!(e.sqlstate(), "22012");
    let e = run(&div, &ints(i32::MIN.into(), -1), &[oid::INT4]).unwrap_err();
    assert_eq!(
        (e.sqlstate(), e.to_string().as_str()),
        ("22003", "integer out of range")
    );
    let add = op(Op::Add, vec![Node::Input(0), num("1")], 0);
    let e = run(
        &add,
        &[(oid::INT4, Key::Int(i32::MAX.into()))],
        &[oid::INT4],
    )
    .unwrap_err();
    assert_eq!(e.sqlstate(), "22003");
    // count(*) * 2: int8 × int4 → int8.
    let twice = op(Op::Mul, vec![Node::Input(0), num("2")], 0);
    assert_eq!(
        run(&twice, &[(oid::INT8, Key::Int(21))], &[oid::INT8]).unwrap(),
        "42"
    );
}

#[test]
fn numeric_results_keep_postgres_scales() {
    // sum(x) / count(*) with sum numeric: select_div_scale.
    let div = op(Op::Div, vec![Node::Input(0), Node::Input(1)], 0);
    let inputs = [(oid::NUMERIC, n("10")), (oid::INT8, Key::Int(3))];
    assert_eq!(
        run(&div, &inputs, &[oid::NUMERIC]).unwrap(),
        "3.3333333333333333"
    );
    // round(avg(x), 2)
    let round = op(Op::Round, vec![Node::Input(0), num("2")], 0);
    assert_eq!(
        run(
            &round,
            &[(oid::NUMERIC, n("2.5000000000000000"))],
            &[oid::NUMERIC]
        )
        .unwrap(),
        "2.50"
    );
    // avg(x)::int rounds half away from zero.
    let cast = pred(
        Op::Cast(CastTarget {
            oid: oid::INT4,
            numeric_typmod: None,
        }),
        vec![Node::Input(0)],
    );
    assert_eq!(run(&cast, &[(oid::NUMERIC, n("2.5"))], &[]).unwrap(), "3");
    // sum(x)::numeric(6,1)
    let typmod = pred(
        Op::Cast(CastTarget {
            oid: oid::NUMERIC,
            numeric_typmod: Some((6, 1)),
        }),
        vec![Node::Input(0)],
    );
    assert_eq!(
        run(&typmod, &[(oid::NUMERIC, n("12.25"))], &[]).unwrap(),
        "12.3"
    );
    assert_eq!(
        run(&typmod, &[(oid::NUMERIC, n("123456"))], &[])
            .unwrap_err()
            .sqlstate(),
        "22003"
    );
    // numeric × float8 → float8.
    let mul = op(Op::Mul, vec![Node::Input(0), Node::Input(1)], 0);
    let inputs = [(oid::NUMERIC, n("1.5")), (oid::FLOAT8, Key::Float(0.1))];
    assert_eq!(
        run(&mul, &inputs, &[oid::FLOAT8]).unwrap(),
        "0.15000000000000002"
    );
}

#[test]
fn case_coalesce_and_literals_take_their_context_type() {
    // CASE WHEN count(*) > 10 THEN 'big' ELSE 'small' END
    let case = op(
        Op::Case {
            operand: false,
            otherwise: true,
        },
        vec![
            pred(Op::Cmp(CmpOp::Gt), vec![Node::Input(0), num("10")]),
            text("big"),
            text("small"),
        ],
        0,
    );
    assert_eq!(
        run(&case, &[(oid::INT8, Key::Int(11))], &[oid::TEXT]).unwrap(),
        "big"
    );
    assert_eq!(
        run(&case, &[(oid::INT8, Key::Int(1))], &[oid::TEXT]).unwrap(),
        "small"
    );
    // coalesce(sum(x), 0) over no rows.
    let co = op(Op::Coalesce, vec![Node::Input(0), num("0")], 0);
    assert_eq!(
        run(&co, &[(oid::NUMERIC, Key::Null)], &[oid::NUMERIC]).unwrap(),
        "0"
    );
    // sum(x) > '100': the literal is read as numeric.
    let gt = pred(Op::Cmp(CmpOp::Gt), vec![Node::Input(0), text("100")]);
    assert_eq!(run(&gt, &[(oid::NUMERIC, n("100.5"))], &[]).unwrap(), "t");
    let bad = pred(Op::Cmp(CmpOp::Gt), vec![Node::Input(0), text("abc")]);
    assert_eq!(
        run(&bad, &[(oid::INT8, Key::Int(1))], &[])
            .unwrap_err()
            .sqlstate(),
        "22P02"
    );
    // max(d) >= '2023-01-05' on a date.
    let date = pred(
        Op::Cmp(CmpOp::GtEq),
        vec![Node::Input(0), text("2023-01-05")],
    );
    assert_eq!(
        run(&date, &[(oid::DATE, Key::Int(8405))], &[]).unwrap(),
        "t"
    );
    assert_eq!(
        run(&date, &[(oid::DATE, Key::Int(8404))], &[]).unwrap(),
        "f"
    );
    // 'n=' || count(*)
    let cat = op(Op::Concat, vec![text("n="), Node::Input(0)], 0);
    assert_eq!(
        run(&cat, &[(oid::INT8, Key::Int(5))], &[oid::TEXT]).unwrap(),
        "n=5"
    );
}

#[test]
fn three_valued_logic() {
    let and = pred(Op::And, vec![Node::Input(0), Node::Input(1)]);
    let b = |v: Option<bool>| (oid::BOOL, v.map_or(Key::Null, Key::Bool));
    assert_eq!(run(&and, &[b(None), b(Some(false))], &[]).unwrap(), "f");
    assert_eq!(run(&and, &[b(None), b(Some(true))], &[]).unwrap(), "NULL");
    let or = pred(Op::Or, vec![Node::Input(0), Node::Input(1)]);
    assert_eq!(run(&or, &[b(None), b(Some(true))], &[]).unwrap(), "t");
    let not_in = pred(
        Op::InList(true),
        vec![Node::Input(0), num("1"), Node::Const(Literal::Null)],
    );
    assert_eq!(
        run(&not_in, &[(oid::INT4, Key::Int(2))], &[]).unwrap(),
        "NULL"
    );
    assert_eq!(run(&not_in, &[(oid::INT4, Key::Int(1))], &[]).unwrap(), "f");
}

#[test]
fn unsupported_types_are_refused_when_bound() {
    // date + int is computed by Postgres as a date: not at the proxy.
    let add = op(Op::Add, vec![Node::Input(0), num("1")], 0);
    let e = add.bind(&[oid::DATE], &[oid::DATE]).unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
    // float % float does not exist.
    let m = op(Op::Mod, vec![Node::Input(0), Node::Input(0)], 0);
    assert_eq!(
        m.bind(&[oid::FLOAT8], &[oid::FLOAT8])
            .unwrap_err()
            .sqlstate(),
        "0A000"
    );
}

#[test]
fn floats_follow_postgres() {
    let div = op(Op::Div, vec![Node::Input(0), num("0")], 0);
    assert_eq!(
        run(&div, &[(oid::FLOAT8, Key::Float(1.0))], &[oid::FLOAT8])
            .unwrap_err()
            .sqlstate(),
        "22012"
    );
    let round = op(Op::Round, vec![Node::Input(0)], 0);
    assert_eq!(
        run(&round, &[(oid::FLOAT8, Key::Float(2.5))], &[oid::FLOAT8]).unwrap(),
        "2"
    );
    let cast = pred(
        Op::Cast(CastTarget {
            oid: oid::NUMERIC,
            numeric_typmod: None,
        }),
        vec![Node::Input(0)],
    );
    assert_eq!(
        run(&cast, &[(oid::FLOAT8, Key::Float(1.0 / 3.0))], &[]).unwrap(),
        "0.333333333333333"
    );
}
