import AnvilCore
import COneDNN

/// Which special values a fast kernel gets wrong. oneDNN's max pooling, binary max and
/// min and exp drop or mangle NaN (x86's max and min return their second operand when
/// the first is NaN); its softmax also needs a row holding +∞ to come out NaN, as
/// ONNX Runtime and the reference give it.
public enum NonFinite {
    case nan, nanOrPositiveInfinity, any

    /// Whether `count` floats at `p` (any alignment) hold a value of this kind: the exact
    /// test runs only when `nonFiniteFloats` finds something.
    func occurs(in p: UnsafeRawPointer, count: Int) -> Bool {
        guard Self.nonFiniteFloats(p, count: count) else { return false }
        for j in 0..<count {
            let x = p.loadUnaligned(fromByteOffset: j * 4, as: Float.self)
            if x.isNaN || (self == .nanOrPositiveInfinity && x == .infinity) || (self == .any && x.isInfinite) { return true }
        }
        return false
    }

    /// Whether a tensor holds NaN or ±∞ (integer and boolean tensors never do).
    public static func anyIn(_ t: Tensor) -> Bool {
        switch t.dataType {
        case .float: return (try? t.withHostBytes { raw in raw.baseAddress.map { nonFiniteFloats($0, count: t.count) } ?? false }) ?? false
        case .double, .float16, .bfloat16: return t.doubles.contains { !$0.isFinite }
        default: return false
        }
    }

    /// Whether `count` floats at `p` hold NaN or ±∞: one multiply-add per element
    /// (x · 0 is NaN only for NaN and ±∞).
    static func nonFiniteFloats(_ p: UnsafeRawPointer, count: Int) -> Bool {
        var any = SIMD16<Float>(repeating: 0)
        var i = 0
        while i + 16 <= count { any += p.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self) * 0; i += 16 }
        var tail: Float = 0
        while i < count { tail += p.loadUnaligned(fromByteOffset: i * 4, as: Float.self) * 0; i += 1 }
        return any.sum().isNaN || tail.isNaN
    }
}

/// A layer whose fast kernel is wrong only on special values: its inputs are scanned
/// before each run (a read of the input, cheap beside the kernel), and when one holds
/// such a value the layer runs on its reference kernel instead, converting blocked
/// layouts to plain and back. The plan keeps the fast kernel's speed on finite data
/// and the reference's NaN and infinity semantics on the rest.
final class NonFiniteGuardStep: PlanStep {
    let fast: [PlanStep]
    /// The values scanned before each run, each for what its kernel gets wrong.
    let scanned: [(value: PlanValue, kind: NonFinite)]
    let node: Layer
    let definition: KernelDefinition
    /// The layer's inputs as the fast kernel reads them (any layout), nil when absent.
    let inputs: [PlanValue?]
    let outputs: [PlanValue]

    init(_ node: Layer, definition: KernelDefinition, fast: [PlanStep], scanning scanned: [(value: PlanValue, kind: NonFinite)],
         inputs: [PlanValue?], outputs: [PlanValue]) {
        self.fast = fast
        self.scanned = scanned
        self.node = node
        self.definition = definition
        self.inputs = inputs
        self.outputs = outputs
        let implementation = fast.map(\.implementation).joined(separator: " + ")
        super.init(layer: node.name, implementation: implementation,
                   reads: fast.flatMap(\.reads) + inputs.compactMap { $0 }, writes: fast.flatMap(\.writes))
    }

    override func bind(_ plan: ExecutionPlan) throws {
        for step in fast { try step.bind(plan) }
    }

    override func run(_ plan: ExecutionPlan, stream: DNNLStream) throws {
        let special = scanned.contains { v, kind in
            kind.occurs(in: plan.address(v), count: v.byteCount / MemoryLayout<Float>.size)
        }
        guard special else {
            for step in fast { try step.run(plan, stream: stream) }
            return
        }
        let arguments = try inputs.map { v in try v.map { try plan.anyLayoutTensor($0, stream: stream) } }
        let context = EvalContext(name: node.name, opType: node.opType, domain: node.domain, outputCount: node.outputs.count,
                                  attributes: node.attributes, opset: node.opset, inputs: arguments) { body, _ in
            throw AnvilError.invalidNode(node: self.node.name, op: self.node.opType, reason: "planned runs hold no subgraphs (\(body.name))")
        }
        let results = try definition.evaluate(context)
        for (target, result) in zip(outputs, results) {
            guard result.shape == target.shape, result.dataType == target.dataType else {
                throw PlanMismatch(layer: node.name, value: target.name, planned: target.shape, actual: result.shape)
            }
            try plan.storeAnyLayout(result, into: target, stream: stream)
        }
    }
}

extension ExecutionPlan {
    /// Wraps the steps appended since `mark` (one layer's fast kernel) in a guard that
    /// runs the layer's reference kernel when a scanned value holds its kind; not where no
    /// NaN or infinity can reach the layer (`exactNonFinite`).
    func guardNonFinite(_ layer: Layer, from mark: Int, scanning: [(value: PlanValue, kind: NonFinite)],
                        inputs: [PlanValue?], outputs: [PlanValue]) throws {
        guard exactNonFinite(layer) else { return }
        guard let definition = KernelRegistry.lookup(domain: layer.domain, opType: layer.opType, opset: layer.opset) else {
            throw AnvilError.unsupportedOp(node: layer.name, op: layer.opType, domain: layer.domain, version: layer.opset)
        }
        let fast = Array(steps[mark...])
        steps.removeLast(steps.count - mark)
        steps.append(NonFiniteGuardStep(layer, definition: definition, fast: fast, scanning: scanning, inputs: inputs, outputs: outputs))
    }

    /// A value's contents as a plain tensor, reordered out of a blocked layout (made at
    /// run time: only the guards' rare path uses it).
    func anyLayoutTensor(_ v: PlanValue, stream: DNNLStream) throws -> Tensor {
        guard let layout = v.layout else { return try tensor(v) }
        let plain = try DNNLLayout.plain(v.shape)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(plain.byteCount, 64), alignment: 64)
        defer { buffer.deallocate() }
        try DNNLReorder(engine: engine, from: DNNLLayout(layout), to: plain).run(stream: stream, from: address(v), to: buffer)
        try stream.wait()
        return try Tensor.fromHostBytes(v.dataType, shape: v.shape, bytes: buffer)
    }

    /// Stores a plain tensor into a value of any layout.
    func storeAnyLayout(_ t: Tensor, into v: PlanValue, stream: DNNLStream) throws {
        guard let layout = v.layout else { return try store(t, into: v) }
        let plain = try DNNLLayout.plain(v.shape)
        try t.withHostBytes { raw in
            guard let base = raw.baseAddress, raw.count == plain.byteCount else {
                throw AnvilError.invalidTensor(name: v.name, reason: "has \(raw.count) bytes, planned \(plain.byteCount)")
            }
            try DNNLReorder(engine: engine, from: plain, to: DNNLLayout(layout)).run(stream: stream, from: base, to: address(v))
            try stream.wait()
        }
    }
}

extension ExecutionPlan {
    /// Ops that can make NaN or ±∞ out of finite numbers (a division by zero, the log of
    /// zero, the square root of a negative, an exponential's overflow, a narrowing cast).
    /// Overflow of a sum of finite products (|x| > 3.4·10³⁸) is not counted: a fused
    /// activation after it may turn the NaN it makes into 0.
    static let nonFiniteSources: Set<String> = [
        "Div", "Reciprocal", "Log", "Sqrt", "Pow", "Exp", "Acos", "Asin", "Acosh", "Atanh", "Tan", "Cosh", "Sinh",
        "Softplus", "LogSoftmax", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "Mod", "Cast", "CastLike",
        "LpNormalization", "Erfinv",
    ]
    /// Normalizations that divide by √(variance + ε): a source when ε is 0.
    static let normalizations: Set<String> = [
        "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "anvil.LayerNormalization",
        "anvil.RMSNormalization", "SimplifiedLayerNormalization",
    ]

    /// The values that may hold NaN or ±∞ when every graph input is finite: the outputs
    /// of the sources above (a division only by a non-constant or a constant holding 0),
    /// of ops outside the ONNX and Anvil domains, constants holding them, and everything
    /// computed from those.
    static func reachedByNonFinite(_ layers: [Layer], constants: ConstantStore) -> Set<String> {
        var reached: Set<String> = []
        for layer in layers {
            let fromInputs = layer.inputs.contains { name in
                !name.isEmpty && (reached.contains(name) || (constants.contains(name) && constants.holdsNonFinite(name)))
            }
            guard fromInputs || isSource(layer, constants: constants) else { continue }
            for name in layer.inputs where constants.contains(name) && constants.holdsNonFinite(name) { reached.insert(name) }
            reached.formUnion(layer.outputs.filter { !$0.isEmpty })
        }
        return reached
    }

    private static func isSource(_ layer: Layer, constants: ConstantStore) -> Bool {
        guard layer.domain.isEmpty || layer.domain == "ai.onnx" || layer.domain == anvilDomain else { return true }
        if layer.opType == "Div", layer.domain.isEmpty, layer.present(1), let divisor = constants[layer.inputs[1]] {
            return divisor.dataType.isFloatingPoint && divisor.doubles.contains { $0 == 0 }
        }
        if nonFiniteSources.contains(layer.opKey) { return true }
        if normalizations.contains(layer.opKey) { return ((try? layer.attributeReader.float("epsilon", 1e-5)) ?? 0) == 0 }
        return false
    }

    /// Whether a float input among `inputs` (in the plan's input order) holds NaN or ±∞.
    public func holdsNonFinite(_ inputs: [UnsafeRawBufferPointer]) -> Bool {
        zip(graphInputs, inputs).contains { v, buffer in
            v.dataType == .float && buffer.baseAddress.map { NonFinite.nonFiniteFloats($0, count: buffer.count / 4) } == true
        }
    }

    /// Caller buffers (in the plan's input order) as tensors of the planned types.
    public func inputTensors(_ inputs: [UnsafeRawBufferPointer]) throws -> [Tensor] {
        try zip(graphInputs, inputs).map { v, buffer in
            guard buffer.count == v.byteCount, let base = buffer.baseAddress else {
                throw AnvilError.invalidTensor(name: v.name, reason: "has \(buffer.count) bytes, the plan needs \(v.byteCount) (\(v.dataType) \(v.shape))")
            }
            return try Tensor.fromHostBytes(v.dataType, shape: v.shape, bytes: base)
        }
    }

    /// Whether a layer's fast kernel must keep NaN and ±∞ as the reference does: always
    /// unless the plan was made for finite inputs, then only where a non-finite value can
    /// reach the layer (`reachedByNonFinite`).
    func exactNonFinite(_ layer: Layer) -> Bool {
        !assumesFiniteInputs || layer.inputs.contains { reachedByNonFinite.contains($0) }
    }
}
