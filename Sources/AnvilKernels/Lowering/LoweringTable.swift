import AnvilCore
import COneDNN

/// How a kernel's output layout follows from its input's; tactic timing propagates
/// the layouts it chooses for convolutions through the other layers with it.
enum OutputLayout {
    /// The output keeps the input's layout (eltwise, binary, pooling, in-place concatenation).
    case input
    /// The output is plain row-major.
    case plain
}

/// One row of the lowering table: a kernel kind, the ops it can run, how its output
/// layout follows from its input's, and how it instantiates a layer for concrete shapes.
struct LoweringEntry: Sendable {
    let kind: KernelKind
    /// Ops as `Layer.opKey` names them ("Conv", "anvil.FusedConv").
    let ops: Set<String>
    let output: OutputLayout
    /// Whether it produces several outputs (Split's parts); the others take layers with one.
    var multipleOutputs = false
    /// Appends the layer's steps to the plan and returns the decision they implement;
    /// nil when the kind does not fit this layer and its shapes.
    let lower: @Sendable (LayerLowering) throws -> LayerDecision?
    /// A job making the layer's shared kernel ahead of planning (JIT code and packed
    /// weights), run on all cores; nil when the kind has none for this layer.
    var prepare: (@Sendable (LayerLowering, _ inputShape: [Int]) -> (() throws -> Void)?)?
}

/// The lowering table: for every kernel kind, how a decided layer becomes steps of a
/// plan. Rows are in order of preference: an undecided layer takes the first row that
/// serves its op and fits it, the reference kernel when none does.
enum LoweringTable {
    static let entries: [LoweringEntry] = ConvolutionLowering.entries + QuantizedLowering.entries + MatMulLowering.entries + SwiftKernelLowering.entries
        + PoolingLowering.entries + EltwiseLowering.entries + BinaryLowering.entries + NormalizationLowering.entries
        + SoftmaxLowering.entries + ReductionLowering.entries + AttentionLowering.entries + MovementLowering.entries + ShapeKernelLowering.entries
        + DetectionLowering.entries + RecurrentLowering.entries + IndexingLowering.entries
        + EltwiseLowering.fallbacks + SwiftKernelLowering.fallbacks + ShapeKernelLowering.fallbacks

    private static let byOp: [String: [LoweringEntry]] = {
        var table: [String: [LoweringEntry]] = [:]
        for e in entries { for op in e.ops { table[op, default: []].append(e) } }
        return table
    }()

    /// Whether any fast kernel serves the op.
    static func serves(_ op: String) -> Bool { byOp[op] != nil }

    /// The kinds that may run `layer`, in order of preference. Layers that name extra
    /// outputs (MaxPool's indices, Dropout's mask) are left to rows that produce them.
    static func candidates(for layer: Layer) -> [KernelKind] {
        let several = layer.outputs.dropFirst().contains { !$0.isEmpty }
        return (byOp[layer.opKey] ?? []).filter { !several || $0.multipleOutputs }.map(\.kind)
    }

    /// The row of `kind` that serves `op`.
    static func entry(_ kind: KernelKind, op: String) -> LoweringEntry? { byOp[op]?.first { $0.kind == kind } }

    static func lower(_ kind: KernelKind, _ l: LayerLowering) throws -> LayerDecision? {
        try entry(kind, op: l.layer.opKey)?.lower(l)
    }

    /// The job making the layer's kernel ahead of planning, for its decided kind or its first candidate.
    static func prepare(_ l: LayerLowering, inputShape: [Int]) -> (() throws -> Void)? {
        let kind = l.layer.decision?.kernel ?? candidates(for: l.layer).first
        guard let kind, let prepare = entry(kind, op: l.layer.opKey)?.prepare else { return nil }
        return prepare(l, inputShape)
    }

    /// The layout of `layer`'s outputs when its input is in `input` and the layer is
    /// not a convolution (whose layout tactic timing chooses).
    public static func outputLayout(of layer: Layer, input: Layout) -> Layout {
        guard let kind = layer.decision?.kernel ?? candidates(for: layer).first, let entry = entry(kind, op: layer.opKey) else { return .plain }
        return entry.output == .input ? input : .plain
    }
}

/// A oneDNN primitive that would run on oneDNN's reference implementation: never
/// chosen while another kernel exists.
struct SlowImplementation: Error, CustomStringConvertible {
    let kind: KernelKind
    let implementation: String
    var description: String { "oneDNN offers only its reference implementation (\(implementation)) for this \(kind)" }
}

/// What a lowering sees while it instantiates one layer: the plan being built (its
/// values, constants and build-time shapes) and the layer with its decision.
struct LayerLowering {
    let plan: ExecutionPlan
    let layer: Layer

    var op: String { layer.opKey }
    var attributes: AttributeReader { layer.attributeReader }
    var context: EvalContext { layer.evalContext }

    func constant(_ i: Int) -> Tensor? {
        i < layer.inputs.count ? plan.constants[layer.inputs[i]] : nil
    }
    /// A constant input as kernel weights (not made into a tensor unless the kernel needs it plain).
    func weights(_ i: Int) -> KernelWeights? {
        i < layer.inputs.count ? plan.constants.weights(layer.inputs[i]) : nil
    }
    func isConstant(_ i: Int) -> Bool { i < layer.inputs.count && plan.constants.contains(layer.inputs[i]) }
    /// Input `i` in its own element type: a float value a reduced-precision layer stored in
    /// BF16 comes reordered to FP32 (kernels that read BF16 themselves take `storedValue`).
    /// Nil when absent or constant.
    func value(_ i: Int) -> PlanValue? {
        guard let v = storedValue(i) else { return nil }
        return v.isReduced ? try? plan.full(v) : v
    }

    /// Input `i` as stored, possibly narrower than its type (for kernels that read BF16).
    func storedValue(_ i: Int) -> PlanValue? {
        i < layer.inputs.count && !layer.inputs[i].isEmpty ? plan.values[layer.inputs[i]] : nil
    }
    func present(_ i: Int) -> Bool { layer.present(i) }
    func outputType(_ i: Int = 0) throws -> (DataType, [Int]) { try plan.type(of: layer.outputs[i]) }

    /// A plan value for input `i` (a constant read in place or copied into plan storage), nil when absent.
    func operand(_ i: Int) throws -> PlanValue? {
        if let v = value(i) { return v }
        if isConstant(i) { return try plan.constantValue(layer.inputs[i]) }
        return nil
    }

    /// The decision this lowering implements: `kind`, with the layout the output got.
    func decided(_ kind: KernelKind, algorithm: Algorithm = .direct, postOps: PostOps = .none) -> LayerDecision {
        LayerDecision(kernel: kind, algorithm: algorithm, layout: plan.layout(of: layer.outputs[0]) ?? .plain,
                      precision: plan.precision(of: layer.outputs[0]), postOps: postOps)
    }

    /// Appends a oneDNN step; refuses oneDNN's reference implementations, so the
    /// planner tries the next kernel.
    func emit(_ kind: KernelKind, _ step: PrimitiveStep) throws {
        if step.primitive.isReference { throw SlowImplementation(kind: kind, implementation: step.primitive.implementation) }
        plan.steps.append(step)
    }

    /// The destination of a layer with a residual sum: the residual's own storage
    /// when nothing reads it later, else a fresh buffer it is copied into.
    func residualDestination(_ r: PlanValue, layout: dnnl_memory_desc_t, notSharing input: PlanValue) throws -> (PlanValue, [(PlanValue, PlanValue)]) {
        let name = layer.outputs[0]
        let (t, shape) = try outputType()
        let residual = try plan.inLayout(r, layout)
        if plan.dies(residual), residual.buffer != input.buffer, residual.constant == nil {
            return (plan.alias(name, of: residual, type: t, shape: shape, layout: layout), [])
        }
        return (plan.newValue(name, t, shape, layout: layout), [(residual, plan.values[name]!)])
    }

    /// The output written over input `x` when nothing reads `x` later, else a new value; same layout.
    func inPlaceOutput(over x: PlanValue, type: DataType = .float, shape: [Int]? = nil) -> PlanValue {
        let shape = shape ?? x.shape
        return plan.dies(x) && x.constant == nil ? plan.alias(layer.outputs[0], of: x, type: type, shape: shape, layout: x.layout)
                                                 : plan.newValue(layer.outputs[0], type, shape, layout: x.layout)
    }
}
