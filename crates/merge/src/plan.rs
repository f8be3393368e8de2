//! The shape of a cross-shard merge: what the planner (the router crate)
//! decides and the operators of [`crate::tree`] follow. Pure data, built
//! once per statement and cached with its plan.

use crate::expr::Node;
use crate::ops::WindowFunc;
use crate::AggKind;

/// The parts of a cross-shard plan the merge tree reads (the router's
/// `MergePlan` implements it, so a cached plan is shared, not copied).
pub trait MergeSpec: Send + Sync {
    /// How rows are combined.
    fn mode(&self) -> &MergeMode;
    /// Window functions computed over the merged rows.
    fn window(&self) -> Option<&WindowPlan>;
    /// Hidden columns after the visible ones.
    fn hidden(&self) -> usize;
    /// Visible columns when the select list names them all (`None` with
    /// `SELECT *`, whose expansion only the shards' RowDescription tells).
    fn visible(&self) -> Option<usize>;
    /// Visible columns other than `*` expansions.
    fn visible_fixed(&self) -> usize;
}

/// How rows from the shards are combined.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeMode {
    /// Forward rows as they arrive.
    Concat,
    /// K-way merge on hidden sort keys (no keys: arrival order with LIMIT).
    Sorted {
        /// The sort keys, most significant first.
        keys: Vec<SortKey>,
        /// `DISTINCT ON`: only the first row of each value of the first
        /// `distinct_on` keys is sent (0: every row).
        distinct_on: usize,
    },
    /// Aggregation and grouping.
    Grouped(GroupPlan),
}

/// One sort key: a hidden column and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// Absolute column position in the shard's row (0-based).
    pub column: usize,
    /// `DESC`.
    pub desc: bool,
    /// Where NULLs go (already resolved: ASC → last, DESC → first unless
    /// stated).
    pub nulls_first: bool,
}

/// How grouped rows are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    /// The order of the shards' rows: final-order keys first (when the
    /// final order streams), then every group key. Empty without GROUP BY.
    pub merge_keys: Vec<SortKey>,
    /// Columns whose equality makes two rows the same group.
    pub group_columns: Vec<usize>,
    /// The aggregates to combine.
    pub aggregates: Vec<AggSlot>,
    /// Per visible column: where its value comes from.
    pub outputs: Vec<OutputColumn>,
    /// Expressions evaluated at the proxy per combined group (outputs,
    /// HAVING, final-order keys over aggregates).
    pub exprs: Vec<ProxyExpr>,
    /// HAVING, evaluated on the combined groups: an index into `exprs`.
    pub having: Option<usize>,
    /// The final order when it needs an aggregate (groups are sorted in
    /// memory); empty when the merge order already is the final order.
    pub final_sort: Vec<FinalKey>,
    /// Without GROUP BY: exactly one output row, even over no rows.
    pub single_row: bool,
    /// INTERSECT ALL / EXCEPT ALL: expression `n` of `exprs` says how many
    /// times each combined group's row is sent.
    pub repeat: Option<usize>,
    /// The argument of the [`AggSlot::distinct`] aggregates (one for all):
    /// its binary column, the last merge key, so a group's rows arrive
    /// sorted by it and equal values from several shards are adjacent.
    pub distinct_value: Option<usize>,
    /// The shards also group by the ORDER BY keys of `string_agg`/`array_agg`/
    /// `json_agg` ([`AggSlot::order`]): without GROUP BY they send no row
    /// over no rows.
    pub gathered: bool,
}

/// One aggregate: its function and the columns of its partial values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggSlot {
    /// The aggregate.
    pub func: AggKind,
    /// Absolute columns of the partials, in the order of the router's `partial_names`.
    pub partials: Vec<usize>,
    /// A `DISTINCT` aggregate whose values may repeat across shards: the
    /// shards group by [`GroupPlan::distinct_value`] too, and the proxy
    /// adds, per distinct value of a group, the partials of its first row
    /// that holds the value (FILTER may leave it out on some shards).
    pub distinct: bool,
    /// The ORDER BY inside a gathered aggregate (`string_agg`, `array_agg`,
    /// `json_agg`): its keys' hidden columns, which the shards also group
    /// by; the proxy orders a group's rows by them before combining.
    pub order: Vec<SortKey>,
}

/// Where a visible column's value comes from in grouped mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputColumn {
    /// The shard's own value for the group (same for all its rows).
    Group,
    /// The combined aggregate in slot `n`.
    Aggregate(usize),
    /// Expression `n` of [`GroupPlan::exprs`].
    Expr(usize),
}

/// A value of a combined group used for HAVING or the final order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupValue {
    /// A per-group column of the shard rows (binary hidden column).
    Column(usize),
    /// The combined aggregate in slot `n`.
    Aggregate(usize),
    /// Expression `n` of [`GroupPlan::exprs`].
    Expr(usize),
}

/// One key of the final (in-memory) order of groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinalKey {
    /// The value.
    pub value: GroupValue,
    /// `DESC`.
    pub desc: bool,
    /// NULLs first.
    pub nulls_first: bool,
}

/// An expression evaluated at the proxy for each combined group.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyExpr {
    /// The tree; [`Node::Input`] `i` is `inputs[i]`.
    pub tree: Node,
    /// The values the tree reads: combined aggregates and per-group
    /// columns (never [`GroupValue::Expr`]).
    pub inputs: Vec<GroupValue>,
    /// The probe columns (absolute positions) typing its operator nodes.
    pub probes: Vec<usize>,
}

/// Window functions the proxy computes over the merged rows.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowPlan {
    /// The first merge keys: the window's PARTITION BY.
    pub partition_keys: usize,
    /// The merge keys after them: the window's ORDER BY.
    pub order_keys: usize,
    /// The calls, each filling one visible column.
    pub calls: Vec<WindowCall>,
}

/// One window function call of the select list.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowCall {
    /// The function; its argument index is this call's index in
    /// [`WindowPlan::calls`].
    pub func: WindowFunc,
    /// The visible column it fills.
    pub output: usize,
    /// The column holding its argument's value per row.
    pub arg: Option<usize>,
    /// `min`/`max`: the hidden column holding the argument in binary, to
    /// compare.
    pub key: Option<usize>,
}

/// Columns the merge compares (sort, group and final-order keys, the
/// inputs of expressions, min/max and gathered-aggregate keys): text among
/// them can only be merged where the database orders text bytewise.
pub fn compared_columns(spec: &dyn MergeSpec) -> Vec<usize> {
    match spec.mode() {
        MergeMode::Concat => Vec::new(),
        MergeMode::Sorted { keys, .. } => keys
            .iter()
            .map(|k| k.column)
            // min/max OVER (...) compare their arguments.
            .chain(
                spec.window()
                    .iter()
                    .flat_map(|w| w.calls.iter().filter_map(|c| c.key)),
            )
            .collect(),
        MergeMode::Grouped(g) => g
            .merge_keys
            .iter()
            .map(|k| k.column)
            .chain(g.group_columns.iter().copied())
            .chain(g.final_sort.iter().filter_map(|k| match k.value {
                GroupValue::Column(c) => Some(c),
                GroupValue::Aggregate(_) | GroupValue::Expr(_) => None,
            }))
            // Expressions compare and order their text inputs.
            .chain(g.exprs.iter().flat_map(|x| {
                x.inputs
                    .iter()
                    .filter_map(|i| match i {
                        GroupValue::Column(c) => Some(*c),
                        _ => None,
                    })
                    .chain(x.probes.iter().copied())
            }))
            .chain(
                g.aggregates
                    .iter()
                    .filter(|a| matches!(a.func, AggKind::Min | AggKind::Max))
                    .map(|a| a.partials[0]),
            )
            // The ORDER BY keys inside gathered aggregates.
            .chain(
                g.aggregates
                    .iter()
                    .flat_map(|a| a.order.iter().map(|k| k.column)),
            )
            // A string_agg compared in HAVING or ORDER BY (a hidden partial).
            .chain(
                g.aggregates
                    .iter()
                    .filter(|a| {
                        a.func == AggKind::StringAgg && a.partials[0] >= spec.visible_fixed()
                    })
                    .map(|a| a.partials[0]),
            )
            .collect(),
    }
}
