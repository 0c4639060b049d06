import AnvilCore
import COneDNN

/// One layer of an engine: an op with its attributes, bound to named tensors, and
/// the decision the builder made for it (kernel, algorithm, layout, precision, post-ops).
public struct Layer {
    public var name: String
    public var opType: String
    public var domain: String
    /// The opset the op's semantics follow.
    public var opset: Int
    public var inputs: [String]
    public var outputs: [String]
    /// Attributes; subgraph attributes hold `EngineGraph`s.
    public var attributes: [String: Attribute]
    /// Names of the original ONNX nodes this layer stands for.
    public var fusedFrom: [String]
    /// The builder's decision; nil while the builder lets the planner choose (an
    /// engine file records one for every layer it plans).
    public var decision: LayerDecision?

    public init(name: String, opType: String, domain: String, opset: Int, inputs: [String], outputs: [String],
                attributes: [String: Attribute], fusedFrom: [String], decision: LayerDecision? = nil) {
        self.name = name
        self.opType = opType
        self.domain = domain
        self.opset = opset
        self.inputs = inputs
        self.outputs = outputs
        self.attributes = attributes
        self.fusedFrom = fusedFrom
        self.decision = decision
    }

    /// The op as the lowering table names it: "Conv", or "anvil.FusedConv" for Anvil's own ops.
    public var opKey: String { domain == anvilDomain ? "anvil." + opType : opType }

    /// Whether input `i` is named.
    func present(_ i: Int) -> Bool { i < inputs.count && !inputs[i].isEmpty }

    /// The layer as its reference evaluation sees it, without inputs (for reading attributes).
    var evalContext: EvalContext {
        EvalContext(name: name, opType: opType, domain: domain, outputCount: outputs.count, attributes: attributes, opset: opset, inputs: []) { _, _ in [] }
    }

    var attributeReader: AttributeReader { AttributeReader(attributes: attributes, name: name, opType: opType) }
}

/// A tensor during a planned run: its type and shape, the layout it is stored in,
/// and where: in the context's arena (a buffer, shared by aliases and in-place
/// layers) or in a constant owned by the plan.
final class PlanValue {
    let name: String
    let dataType: DataType
    let shape: [Int]
    /// oneDNN layout; nil for plain row-major.
    let layout: dnnl_memory_desc_t?
    /// Arena buffer index, or -1 for a constant.
    var buffer: Int
    /// Byte offset inside the buffer (views of a larger tensor).
    var offset: Int
    /// Storage of a constant.
    var constant: UnsafeMutableRawPointer?

    init(name: String, dataType: DataType, shape: [Int], layout: dnnl_memory_desc_t?, buffer: Int, offset: Int = 0) {
        self.name = name
        self.dataType = dataType
        self.shape = shape
        self.layout = layout
        self.buffer = buffer
        self.offset = offset
    }

    var count: Int { shape.reduce(1, *) }
    var isPlain: Bool { layout == nil }

    /// The element type in memory: the layout's (BF16 for a float value a reduced-precision
    /// layer wrote), else the value's own.
    var storedType: DataType { layout.flatMap { anvilType($0.data_type) } ?? dataType }
    /// Whether it is stored in a narrower type than its own (a float value kept in BF16).
    var isReduced: Bool { storedType != dataType }

    /// Bytes it occupies (blocked layouts pad channels).
    var byteCount: Int {
        if var l = layout { return anvil_dnnl_md_size(&l) }
        return count * dataType.byteSize
    }

    /// Its memory descriptor: the layout, or the plain row-major descriptor.
    func descriptor() throws -> dnnl_memory_desc_t {
        if let layout { return layout }
        return try plainDescriptor(shape, dataType)
    }

    /// Whether a tensor in layout `d` can be used as this value without a reorder.
    func stored(as d: dnnl_memory_desc_t) throws -> Bool {
        var a = try descriptor(), b = d
        return anvil_dnnl_md_equal(&a, &b) != 0
    }
}

/// The oneDNN element type of an Anvil one, if oneDNN has it.
func dnnlType(_ t: DataType) -> dnnl_data_type_t? {
    switch t {
    case .float: dnnl_f32
    case .float16: dnnl_f16
    case .bfloat16: dnnl_bf16
    case .int32: dnnl_s32
    case .int8: dnnl_s8
    case .uint8: dnnl_u8
    default: nil
    }
}

/// The Anvil element type of a oneDNN one.
func anvilType(_ t: dnnl_data_type_t) -> DataType? {
    switch t {
    case dnnl_f32: .float
    case dnnl_f16: .float16
    case dnnl_bf16: .bfloat16
    case dnnl_s32: .int32
    case dnnl_s8: .int8
    case dnnl_u8: .uint8
    default: nil
    }
}

/// The descriptor `d` with elements of type `t` (the same layout: strides count elements).
func retyped(_ d: dnnl_memory_desc_t, _ t: dnnl_data_type_t) -> dnnl_memory_desc_t {
    var out = d
    out.data_type = t
    return out
}

/// Row-major descriptor of a shape (a scalar is described as [1]).
func plainDescriptor(_ shape: [Int], _ type: DataType = .float) throws -> dnnl_memory_desc_t {
    guard let t = dnnlType(type) else { throw AnvilError.invalidTensor(name: "oneDNN", reason: "\(type) has no oneDNN type") }
    let dims = shape.isEmpty ? [1] : shape
    var md = dnnl_memory_desc_t()
    let strides = ShapeMath.strides(dims).map { Int64($0) }
    try check(anvil_dnnl_md_strided(&md, Int32(dims.count), dims.map { Int64($0) }, t, strides), "describing memory \(dims)")
    return md
}

/// A descriptor viewing plain memory with explicit strides.
func stridedDescriptor(_ dims: [Int], strides: [Int], _ type: DataType = .float) throws -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    try check(anvil_dnnl_md_strided(&md, Int32(dims.count), dims.map { Int64($0) }, dnnlType(type) ?? dnnl_f32, strides.map { Int64($0) }),
              "describing a view \(dims)")
    return md
}
