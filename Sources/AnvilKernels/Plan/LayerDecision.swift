import AnvilCore
import COneDNN

/// How a tensor's elements are laid out in memory. One vocabulary for the whole code
/// base: what a kernel is asked to run in, what a value is stored in, what tactic
/// timing and the engine file record.
public enum Layout: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Row-major N, C, … as ONNX defines tensors.
    case plain = 0
    /// Channels innermost (NHWC), which oneDNN's brgemm kernels also run fast.
    case channelsLast = 1
    /// Channels in blocks of 8 (nChw8c), padded to a multiple of 8.
    case blocked8 = 2
    /// Channels in blocks of 16 (nChw16c), padded; channel splits and concatenations
    /// at block boundaries are views.
    case blocked16 = 3
    /// As a request: whatever layout the kernel's fastest implementation prefers
    /// (nChw16c on AVX-512); the value then records which one it was.
    case preferred = 4
    /// As a description: a oneDNN layout outside this vocabulary.
    case opaque = 5

    public var description: String {
        switch self {
        case .plain: "plain"
        case .channelsLast: "nhwc"
        case .blocked8: "nchw8c"
        case .blocked16: "nchw16c"
        case .preferred: "kernel's choice"
        case .opaque: "oneDNN blocked"
        }
    }

    /// The channel block of a channel-blocked layout.
    public var channelBlock: Int? {
        switch self {
        case .blocked8: 8
        case .blocked16: 16
        default: nil
        }
    }

    /// The layout of a descriptor of a tensor of `shape` (nil: plain row-major).
    static func of(_ descriptor: dnnl_memory_desc_t?, shape: [Int]) -> Layout {
        guard let descriptor else { return .plain }
        if ExecutionPlan.isPlain(descriptor, shape) { return .plain }
        guard (3...5).contains(shape.count), descriptor.format_kind == dnnl_blocked, descriptor.offset0 == 0 else { return .opaque }
        let blocking = descriptor.format_desc.blocking
        let strides = withUnsafeBytes(of: blocking.strides) { Array($0.bindMemory(to: Int64.self).prefix(shape.count)) }.map { Int($0) }
        if blocking.inner_nblks == 0 {
            // Channels last: [N][spatial…][C].
            var expected = [Int](repeating: 0, count: shape.count)
            expected[1] = 1
            var s = shape[1]
            for d in stride(from: shape.count - 1, through: 2, by: -1) { expected[d] = s; s *= shape[d] }
            expected[0] = s
            return strides == expected ? .channelsLast : .opaque
        }
        guard blocking.inner_nblks == 1, blocking.inner_idxs.0 == 1, [8, 16].contains(Int(blocking.inner_blks.0)) else { return .opaque }
        let block = Int(blocking.inner_blks.0)
        // Dense [N][C/block][spatial…][block]: check every stride.
        let padded = [shape[0], (shape[1] + block - 1) / block] + shape[2...]
        var expected = [Int](repeating: 0, count: shape.count)
        var s = block
        for d in stride(from: shape.count - 1, through: 2, by: -1) { expected[d] = s; s *= shape[d] }
        expected[1] = s; s *= padded[1]
        expected[0] = s
        guard strides == expected else { return .opaque }
        return block == 16 ? .blocked16 : .blocked8
    }

    /// oneDNN's format tag for this channel layout of an [N, C, spatial…] tensor of
    /// rank 3 to 5; nil for the other layouts and ranks.
    func formatTag(rank: Int) -> dnnl_format_tag_t? {
        guard (3...5).contains(rank) else { return nil }
        switch self {
        case .channelsLast: return [dnnl_nwc, dnnl_nhwc, dnnl_ndhwc][rank - 3]
        case .blocked8: return [dnnl_aBc8b, dnnl_aBcd8b, dnnl_aBcde8b][rank - 3]
        case .blocked16: return [dnnl_aBc16b, dnnl_aBcd16b, dnnl_aBcde16b][rank - 3]
        default: return nil
        }
    }

    /// The layout `descriptor` gives a float tensor of `shape`, described for the shape
    /// `other`, which adds or drops size-1 spatial dimensions (the same bytes): nil unless
    /// the layout is plain, channels-last or channel-blocked.
    static func restated(_ descriptor: dnnl_memory_desc_t?, shape: [Int], as other: [Int]) throws -> dnnl_memory_desc_t? {
        let layout = of(descriptor, shape: shape)
        guard layout == .plain || layout.formatTag(rank: other.count) != nil else { return nil }
        // The same element type (a BF16 tensor stays BF16).
        return try layout.descriptor(other).map { retyped($0, descriptor?.data_type ?? dnnl_f32) }
    }

    /// The descriptor of a float tensor of `shape` in this layout (`preferred`: oneDNN's "any").
    func descriptor(_ shape: [Int]) throws -> dnnl_memory_desc_t? {
        if self == .plain { return try plainDescriptor(shape) }
        if self == .preferred { return try memoryDescriptor(shape, dnnl_format_tag_any) }
        return try formatTag(rank: shape.count).map { try memoryDescriptor(shape, $0) }
    }
}

/// The numeric precision a layer computes and stores its outputs in.
public enum Precision: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case fp32 = 0
    case bf16 = 1
    case fp16 = 2
    case int8 = 3

    public var description: String {
        switch self {
        case .fp32: "FP32"
        case .bf16: "BF16"
        case .fp16: "FP16"
        case .int8: "INT8"
        }
    }

    /// The precision a weighted kernel computes in: FP16 layers store their weights in FP16 and
    /// compute in FP32 (no FP16 kernels on these CPUs); the others compute in their own.
    var arithmetic: Precision { self == .fp16 ? .fp32 : self }
}

/// The algorithm of a kernel where the library offers a choice.
public enum Algorithm: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// The library's direct implementations (oneDNN picks brgemm, jit or 1×1 itself).
    case direct = 0
    /// Winograd F(2×2, 3×3) / F(4×4, 3×3) convolution on oneDNN's blocked layout.
    case winograd = 1

    public var description: String { self == .direct ? "direct" : "winograd" }
}

/// What runs a layer: the key of the lowering table. Each kind belongs to one
/// kernel family (a oneDNN primitive, a Swift kernel, a view, the reference kernel).
public enum KernelKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case reference = 0
    case convolution = 1
    case deconvolution = 2
    /// Matrix product with constant, prepacked weights (MatMul, Gemm and their fused forms).
    case matmul = 3
    /// Matrix product of runtime tensors with broadcast batch dimensions.
    case batchedMatmul = 4
    case pooling = 5
    case eltwise = 6
    case binary = 7
    case softmax = 8
    case layerNormalization = 9
    case batchNormalization = 10
    /// Scaled dot-product attention as two oneDNN matmuls and a softmax.
    case attention = 11
    /// Concatenation: in place (the parts written into the result) or oneDNN's concat.
    case concat = 12
    case resize = 13
    /// A strided reorder.
    case transpose = 14
    /// Reshape-like layers and contiguous splits: views, no step.
    case view = 15
    case globalAveragePool = 17
    /// Softmax over an outer axis.
    case outerSoftmax = 18
    /// Gather of rows (embeddings), read in place from the engine file.
    case gather = 19
    /// Per-channel scale and shift (a broadcast Mul / Add by a per-channel constant) in any channel layout.
    case channelAffine = 20
    /// A slice: a reorder from a strided view of the input.
    case slice = 21
    /// Cast between booleans, integers and floats.
    case cast = 22
    /// And, Or, Xor, Not of booleans; IsNaN.
    case logical = 23
    /// Where(condition, x, y).
    case select = 24
    /// Float Add / Sub / Mul / Div under any numpy broadcast.
    case broadcastArithmetic = 25
    /// Shape: the input's shape, known to the plan.
    case shape = 26
    /// Range of integers.
    case range = 27
    /// Equal, Less, Greater … into booleans.
    case compare = 28
    /// Add, Sub, Mul of integers.
    case integerArithmetic = 29
    /// Expand: a broadcast copy.
    case expand = 30
    /// A slice whose bounds are computed at run time.
    case dynamicSlice = 31
    /// ReduceMean, ReduceSum, ReduceMax … on oneDNN's reduction primitive.
    case reduction = 32
    /// The same reductions in Swift, over contiguous axes.
    case swiftReduction = 33
    /// ConstantOfShape.
    case constantOfShape = 34
    /// Concat of any element type, in Swift.
    case swiftConcat = 35
    /// Log, Pow, Reciprocal, Floor, Ceil, Erf with the C library's functions.
    case exactMath = 36
    /// A split along an inner axis: each part a strided reorder.
    case splitCopy = 37
    /// Pad in constant mode.
    case pad = 38
    /// ArgMax, ArgMin.
    case argExtreme = 39
    /// RoiAlign, reading the feature map in its channel layout.
    case roiAlign = 40
    /// InstanceNormalization as oneDNN's batch normalization computing its statistics.
    case instanceNormalization = 41
    /// DynamicQuantizeLinear: the range, scale and zero point, and the uint8 values.
    case dynamicQuantize = 42
    /// LSTM with its default activations (`SwiftLSTM`).
    case lstm = 43
    /// GatherND, GatherElements, CumSum (`IndexingLowering`).
    case gatherND = 44
    case gatherElements = 45
    case cumulativeSum = 46
    /// TopK of floats.
    case topK = 47
    /// QLinearConv and FusedQLinearConv: 8-bit activations and weights, 32-bit accumulation,
    /// requantized by output scales (oneDNN's INT8 convolution).
    case quantizedConvolution = 48
    /// QuantizeLinear with one scale and zero point (Swift: divides, as the specification does).
    case quantize = 49
    /// QLinearMatMul and FusedQLinearMatMul with constant int8 weights (oneDNN's INT8 matmul).
    case quantizedMatmul = 50
    /// DequantizeLinear of 8-bit values with one scale and zero point: a scaling reorder.
    case dequantize = 51
    /// QuantizedLookup: 8-bit values through a 256-entry table (Swift).
    case quantizedLookup = 52

    /// The family of kernels this kind belongs to.
    public var family: KernelFamily {
        switch self {
        case .reference: .reference
        case .view: .view
        case .globalAveragePool, .outerSoftmax, .gather, .channelAffine, .cast, .logical, .select, .broadcastArithmetic, .shape, .range, .compare,
             .integerArithmetic, .expand, .dynamicSlice, .swiftReduction, .constantOfShape, .swiftConcat, .exactMath, .pad, .argExtreme,
             .roiAlign, .dynamicQuantize, .lstm, .gatherND, .gatherElements, .cumulativeSum, .topK, .quantize, .quantizedLookup: .swift
        default: .onednn
        }
    }

    public var description: String {
        switch self {
        case .reference: "reference"
        case .convolution: "convolution"
        case .deconvolution: "deconvolution"
        case .matmul: "matmul"
        case .batchedMatmul: "batched matmul"
        case .pooling: "pooling"
        case .eltwise: "eltwise"
        case .binary: "binary"
        case .softmax: "softmax"
        case .layerNormalization: "layer normalization"
        case .batchNormalization: "batch normalization"
        case .attention: "attention"
        case .concat: "concat"
        case .resize: "resize"
        case .transpose: "transpose"
        case .view: "view"
        case .globalAveragePool: "global average pool"
        case .outerSoftmax: "outer-axis softmax"
        case .gather: "gather"
        case .channelAffine: "channel affine"
        case .slice: "slice"
        case .cast: "cast"
        case .logical: "logical"
        case .select: "where"
        case .broadcastArithmetic: "broadcast arithmetic"
        case .shape: "shape"
        case .range: "range"
        case .compare: "comparison"
        case .integerArithmetic: "integer arithmetic"
        case .expand: "expand"
        case .dynamicSlice: "slice with computed bounds"
        case .reduction: "reduction"
        case .swiftReduction: "reduction"
        case .constantOfShape: "constant of shape"
        case .swiftConcat: "concat"
        case .exactMath: "math"
        case .splitCopy: "split"
        case .pad: "pad"
        case .argExtreme: "arg max/min"
        case .roiAlign: "roi align"
        case .instanceNormalization: "instance normalization"
        case .dynamicQuantize: "dynamic quantization"
        case .lstm: "lstm"
        case .gatherND: "gather nd"
        case .gatherElements: "gather elements"
        case .cumulativeSum: "cumulative sum"
        case .topK: "top k"
        case .quantizedConvolution: "quantized convolution"
        case .quantize: "quantize"
        case .quantizedMatmul: "quantized matmul"
        case .dequantize: "dequantize"
        case .quantizedLookup: "quantized lookup"
        }
    }
}

/// Who supplies a kernel.
public enum KernelFamily: Sendable, CustomStringConvertible {
    case onednn, swift, view, reference

    public var description: String {
        switch self {
        case .onednn: "oneDNN"
        case .swift: "Swift"
        case .view: "view"
        case .reference: "reference"
        }
    }
}

/// Work fused into a kernel after its main operation, as oneDNN's post-ops apply it:
/// bias, then the residual sum, then the activation.
public struct PostOps: Sendable, Equatable, CustomStringConvertible {
    public var bias: Bool
    public var residual: Bool
    public var activation: Activation?
    /// The residual is added after the activation (YOLO's x + SiLU(conv(…))), not before.
    public var residualAfterActivation: Bool

    public init(bias: Bool = false, residual: Bool = false, activation: Activation? = nil, residualAfterActivation: Bool = false) {
        self.bias = bias
        self.residual = residual
        self.activation = activation
        self.residualAfterActivation = residualAfterActivation
    }

    public static let none = PostOps()

    /// What a fused layer (FusedConv, FusedGemm, FusedMatMul …) carries: bias in input 2,
    /// the residual in input 3, the activation in its attributes.
    public init(_ layer: Layer) throws {
        self.init(bias: layer.present(2), residual: layer.present(3), activation: try fusedActivation(layer.evalContext),
                  residualAfterActivation: try layer.present(3) && layer.attributeReader.int("residual_after_activation", 0) != 0)
    }

    public var description: String {
        var parts: [String] = []
        if bias { parts.append("bias") }
        if residual && !residualAfterActivation { parts.append("residual sum") }
        if let activation { parts.append(activation.attributes.name) }
        if residual && residualAfterActivation { parts.append("residual sum") }
        return parts.joined(separator: " + ")
    }
}

/// Everything the builder decides about one layer, once: which kernel runs it, with
/// which algorithm, in which activation layout and precision, with which work fused
/// after it. Recorded in the engine file and read back as itself; the runtime only
/// instantiates it for concrete shapes.
public struct LayerDecision: Sendable, Equatable {
    public var kernel: KernelKind
    public var algorithm: Algorithm
    /// The layout the layer's kernel runs in (its output's layout).
    public var layout: Layout
    public var precision: Precision
    /// The type of the output when --layerOutputTypes sets it (a BF16 convolution writing FP32,
    /// a BF16 matrix product writing BF16); nil: the precision's own (BF16 for a BF16
    /// convolution, FP32 for a BF16 matrix product, the precision otherwise).
    public var outputPrecision: Precision?
    public var postOps: PostOps
    /// Why the layer runs on a slow path (the reference kernel), for reports.
    public var slowPathReason: String?

    public init(kernel: KernelKind, algorithm: Algorithm = .direct, layout: Layout = .plain, precision: Precision = .fp32,
                outputPrecision: Precision? = nil, postOps: PostOps = .none, slowPathReason: String? = nil) {
        self.kernel = kernel
        self.algorithm = algorithm
        self.layout = layout
        self.precision = precision
        self.outputPrecision = outputPrecision
        self.postOps = postOps
        self.slowPathReason = slowPathReason
    }

    /// The reference kernel, with the reason it was chosen.
    public static func reference(_ reason: String) -> LayerDecision { LayerDecision(kernel: .reference, slowPathReason: reason) }

    /// Whether the layer runs on a slow path.
    public var isSlowPath: Bool { kernel == .reference }
}

extension LayerDecision: CustomStringConvertible {
    /// "oneDNN convolution (winograd, kernel's choice layout, bias + Relu)", "reference".
    public var description: String {
        if kernel == .reference { return "reference kernel" }
        var details: [String] = []
        if algorithm != .direct { details.append(algorithm.description) }
        if kernel.family == .onednn || kernel.family == .swift { details.append("\(layout) layout") }
        if !postOps.description.isEmpty { details.append(postOps.description) }
        let name = kernel.family == .view ? "\(kernel)" : "\(kernel.family) \(kernel)"
        return details.isEmpty ? name : "\(name) (\(details.joined(separator: ", ")))"
    }
}

extension Activation {
    /// The activation as a code and two parameters, as engine files record post-ops.
    public var code: (kind: UInt8, alpha: Float, beta: Float) {
        switch self {
        case .relu: (1, 0, 0)
        case .clip(let lo, let hi): (2, lo, hi)
        case .leakyRelu(let a): (3, a, 0)
        case .sigmoid: (4, 0, 0)
        case .tanh: (5, 0, 0)
        case .hardSigmoid(let a, let b): (6, a, b)
        case .hardSwish: (7, 0, 0)
        case .elu(let a): (8, a, 0)
        case .mish: (9, 0, 0)
        case .gelu: (10, 0, 0)
        case .geluTanh: (11, 0, 0)
        case .silu: (12, 0, 0)
        case .swish(let a): (13, a, 0)
        }
    }

    /// The activation of a code; nil for an unknown one.
    public init?(code: UInt8, alpha: Float, beta: Float) {
        switch code {
        case 1: self = .relu
        case 2: self = .clip(min: alpha, max: beta)
        case 3: self = .leakyRelu(alpha: alpha)
        case 4: self = .sigmoid
        case 5: self = .tanh
        case 6: self = .hardSigmoid(alpha: alpha, beta: beta)
        case 7: self = .hardSwish
        case 8: self = .elu(alpha: alpha)
        case 9: self = .mish
        case 10: self = .gelu
        case 11: self = .geluTanh
        case 12: self = .silu
        case 13: self = .swish(alpha: alpha)
        default: return nil
        }
    }
}
