import AnvilCore
import COneDNN
import Foundation

/// Turns a oneDNN status into a Swift error naming the call that failed.
@inline(__always)
func check(_ status: dnnl_status_t, _ what: @autoclosure () -> String) throws {
    guard status == dnnl_success else {
        let reason: String = switch status {
        case dnnl_out_of_memory: "out of memory"
        case dnnl_invalid_arguments: "invalid arguments"
        case dnnl_unimplemented: "no implementation for these shapes on this CPU"
        default: "oneDNN status \(status.rawValue)"
        }
        throw AnvilError.invalidTensor(name: "oneDNN", reason: "\(what()): \(reason)")
    }
}

/// Threads oneDNN runs its kernels on.
public enum DNNLThreads {
    /// Sets the thread count for the process; false when oneDNN's threading cannot be set.
    @discardableResult
    public static func set(_ n: Int) -> Bool { anvil_set_threads(Int32(clamping: n)) != 0 }
}

/// The instruction set oneDNN's kernels are generated for on this CPU.
public enum DNNLInstructionSet: Sendable {
    case avx512Core, avx2, older

    /// What oneDNN dispatches to here (its own CPU detection, honouring ONEDNN_MAX_CPU_ISA).
    public static var effective: DNNLInstructionSet {
        let isa = dnnl_get_effective_cpu_isa().rawValue
        if isa & dnnl_cpu_isa_avx512_core.rawValue == dnnl_cpu_isa_avx512_core.rawValue { return .avx512Core }
        if isa & dnnl_cpu_isa_avx2.rawValue == dnnl_cpu_isa_avx2.rawValue { return .avx2 }
        return .older
    }
}

/// The oneDNN library this process runs (prepacked layouts belong to one version).
public enum DNNLVersion {
    public static var current: (major: Int, minor: Int, patch: Int) {
        guard let v = dnnl_version()?.pointee else { return (0, 0, 0) }
        return (Int(v.major), Int(v.minor), Int(v.patch))
    }
}

/// A oneDNN CPU engine. Each Anvil engine owns one; there is no global instance.
public final class DNNLEngine: @unchecked Sendable {
    let handle: dnnl_engine_t

    public init() throws {
        var e: dnnl_engine_t?
        try check(dnnl_engine_create(&e, dnnl_cpu, 0), "creating the CPU engine")
        handle = e!
    }

    deinit { dnnl_engine_destroy(handle) }
}

/// A oneDNN stream: the queue one execution context runs its primitives on.
public final class DNNLStream {
    let handle: dnnl_stream_t
    public let engine: DNNLEngine

    public init(engine: DNNLEngine) throws {
        var s: dnnl_stream_t?
        try check(dnnl_stream_create(&s, engine.handle, dnnl_stream_default_flags.rawValue), "creating a stream")
        handle = s!
        self.engine = engine
    }

    deinit { dnnl_stream_destroy(handle) }

    func wait() throws { try check(dnnl_stream_wait(handle), "waiting for the stream") }
}

/// A oneDNN memory object over caller-provided storage (the handle is rebound per run).
final class DNNLMemory {
    let handle: dnnl_memory_t
    var descriptor: dnnl_memory_desc_t
    /// What owns `data` when that is not the caller (a kernel's packed weights): kept alive as
    /// long as this memory object, which a plan may hold after the kernel left its cache.
    private let owner: AnyObject?

    init(_ descriptor: dnnl_memory_desc_t, engine: DNNLEngine, data: UnsafeMutableRawPointer? = nil, owner: AnyObject? = nil) throws {
        self.owner = owner
        var md = descriptor
        var m: dnnl_memory_t?
        // DNNL_MEMORY_NONE: the data handle is set before each execution.
        try check(dnnl_memory_create(&m, &md, engine.handle, data ?? UnsafeMutableRawPointer(bitPattern: 0)), "creating a memory object")
        handle = m!
        self.descriptor = md
    }

    func bind(_ data: UnsafeMutableRawPointer) throws {
        try check(dnnl_memory_set_data_handle(handle, data), "binding memory")
    }

    deinit { dnnl_memory_destroy(handle) }
}

/// A primitive with its descriptor; both freed together. Primitives run in user
/// scratchpad mode: the caller passes the scratch memory (`scratchpadBytes`).
final class DNNLPrimitive {
    let descriptor: dnnl_primitive_desc_t
    let handle: dnnl_primitive_t
    /// Bytes of scratch memory an execution needs.
    let scratchpadBytes: Int

    init(descriptor: dnnl_primitive_desc_t) throws {
        var p: dnnl_primitive_t?
        let status = dnnl_primitive_create(&p, descriptor)
        guard status == dnnl_success, let p else {
            dnnl_primitive_desc_destroy(descriptor)
            try check(status, "creating a primitive")
            throw AnvilError.invalidTensor(name: "oneDNN", reason: "creating a primitive failed")
        }
        self.descriptor = descriptor
        handle = p
        scratchpadBytes = anvil_dnnl_scratchpad_size(descriptor)
    }

    /// Creates the primitive for an op descriptor (`operation`, a dnnl_*_desc_t) with `attributes`;
    /// `reducedPrecision` when it computes in BF16 (made alone: `creation`).
    convenience init<Operation>(_ operation: Operation, attributes: DNNLAttributes, engine: DNNLEngine, what: String,
                                reducedPrecision: Bool = false) throws {
        var op = operation
        var pd: dnnl_primitive_desc_t?
        Self.creation.enter(exclusive: reducedPrecision)
        defer { Self.creation.leave() }
        try withUnsafePointer(to: &op) { p in
            try check(dnnl_primitive_desc_create(&pd, UnsafeRawPointer(p), attributes.handle, engine.handle, nil), "choosing a \(what) implementation")
        }
        try self.init(descriptor: pd!)
    }

    /// Every primitive is made holding this lock: shared by FP32 primitives, alone by those that
    /// touch BF16. oneDNN 2.6 made a kernel wrongly, for the life of the process, when the
    /// process's first BF16 kernel was made on another thread at the same time (ResNet-50
    /// --bf16: its FP32 stem convolution off in about one process in six, never with one thread
    /// or with creation serialized; `PrecisionTests`). FP32 primitives, never seen to interfere
    /// with each other, are still made side by side (planning makes kernels on all cores).
    static let creation = SharedLock()

    deinit {
        dnnl_primitive_destroy(handle)
        dnnl_primitive_desc_destroy(descriptor)
    }

    /// The implementation oneDNN chose (for tactic reports).
    var implementation: String { String(cString: anvil_dnnl_impl_name(descriptor)) }

    /// Whether oneDNN chose one of its reference implementations ("ref:any", "ref_…"),
    /// which run tens of times slower than its optimized ones.
    /// Whether oneDNN offers only its reference implementation ("ref:any", "bnorm_ref:any", "ref_…").
    var isReference: Bool {
        let name = implementation.split(separator: ":").first.map(String.init) ?? implementation
        return name.hasPrefix("ref") || name.hasSuffix("_ref") || name.contains("_ref_")
    }

    /// A memory descriptor the primitive uses (zero when it has none for `what`).
    func query(_ what: dnnl_query_t, index: Int32 = 0) -> dnnl_memory_desc_t {
        anvil_dnnl_query_md(descriptor, what, index)
    }

    /// Executes once with `args`, allocating the scratchpad (paths outside a plan).
    func execute(_ stream: DNNLStream, _ args: [(Int32, DNNLMemory)]) throws {
        var list = args.map { dnnl_exec_arg_t(arg: $0.0, memory: $0.1.handle) }
        var scratch: UnsafeMutableRawPointer?
        var scratchMemory: DNNLMemory?
        if scratchpadBytes > 0 {
            try MemoryPolicy.check(scratchpadBytes, for: "the scratchpad of a \(implementation) kernel")
            scratch = UnsafeMutableRawPointer.allocate(byteCount: scratchpadBytes, alignment: 64)
            scratchMemory = try DNNLMemory(query(dnnl_query_scratchpad_md), engine: stream.engine, data: scratch)
            list.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: scratchMemory!.handle))
        }
        defer { scratch?.deallocate() }
        try check(dnnl_primitive_execute(handle, stream.handle, Int32(list.count), &list), "executing a primitive")
        try stream.wait()
        withExtendedLifetime(scratchMemory) {}
    }
}

/// A dense memory descriptor in a given layout.
func memoryDescriptor(_ dims: [Int], _ tag: dnnl_format_tag_t, _ type: dnnl_data_type_t = dnnl_f32) throws -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    let d = dims.map { Int64($0) }
    try check(anvil_dnnl_md(&md, Int32(d.count), d, type, tag), "describing memory \(dims)")
    return md
}

/// How an 8-bit kernel requantizes, as oneDNN's attributes say it: the destination is
/// `outputScales · (accumulator + bias) + sumScale · (destination − sumZeroPoint)`, then
/// the activation, then `+ destinationZeroPoint`, rounded to nearest even and saturated;
/// the source is read as `source − sourceZeroPoint`. A reorder computes
/// `outputScales · (source − sourceZeroPoint) + destinationZeroPoint`.
public struct DNNLQuantization: Sendable {
    /// One scale, or one per output channel.
    public var outputScales: [Float]
    public var sourceZeroPoint: Int32 = 0
    public var destinationZeroPoint: Int32 = 0
    public var sumScale: Float = 1
    public var sumZeroPoint: Int32 = 0
    /// A convolution's 8-bit source type (u8 or s8), and its destination's (u8, s8, or f32
    /// for a layer whose readers take floats).
    public var sourceType = dnnl_u8
    public var destinationType = dnnl_u8
    /// The residual's type when it differs from the destination's (s8 summed into a u8
    /// destination: the same bytes, read as signed); undefined for the destination's own.
    public var sumType = dnnl_data_type_undef
    /// A quantization of the result before the residual sum, as a model quantizes a
    /// convolution's output that it then adds: the output scales then lead to that
    /// quantization's units, the result is rounded and clamped to [low, high] (its range less
    /// its zero point), and multiplied by `rescale` into the destination's units.
    public var intermediate: (low: Float, high: Float, rescale: Float)?
    /// A scale after the activation (1 / y_scale), when the activation acts on real values
    /// (GELU, SiLU …: the output scales then stop at real units).
    public var finalScale: Float?

    /// The source, weight and destination types of a weighted kernel in `precision`: FP32; BF16
    /// (a BF16 destination, or FP32 where `floatBF16Result`); INT8 with `quantization`'s 8-bit
    /// types and s8 weights. Anything else has no kernel.
    static func types(_ precision: Precision, _ quantization: DNNLQuantization?, floatBF16Result: Bool = false,
                      what: String) throws -> (source: dnnl_data_type_t, weights: dnnl_data_type_t, destination: dnnl_data_type_t) {
        switch (precision, quantization) {
        case (.fp32, nil): return (dnnl_f32, dnnl_f32, dnnl_f32)
        case (.bf16, nil): return (dnnl_bf16, dnnl_bf16, floatBF16Result ? dnnl_f32 : dnnl_bf16)
        case (.int8, let q?): return (q.sourceType, dnnl_s8, q.destinationType)
        default: throw AnvilError.invalidTensor(name: "oneDNN", reason: "no \(precision) \(what)")
        }
    }

    public init(outputScales: [Float], sourceZeroPoint: Int32 = 0, destinationZeroPoint: Int32 = 0) {
        self.outputScales = outputScales
        self.sourceZeroPoint = sourceZeroPoint
        self.destinationZeroPoint = destinationZeroPoint
    }
}

/// Primitive attributes: user scratchpad mode, and post-ops expressing a fused
/// output scale, binary addition (attention masks), residual sum and activation.
final class DNNLAttributes {
    let handle: dnnl_primitive_attr_t

    init(sum: Bool = false, activation: Activation? = nil, exactNonFinite: Bool = true, scale: Float? = nil, add: dnnl_memory_desc_t? = nil,
         quantization: DNNLQuantization? = nil, sumAfterActivation: Bool = false) throws {
        var attr: dnnl_primitive_attr_t?
        try check(dnnl_primitive_attr_create(&attr), "creating primitive attributes")
        handle = attr!
        try check(dnnl_primitive_attr_set_scratchpad_mode(handle, dnnl_scratchpad_mode_user), "setting the scratchpad mode")
        if var scale {
            try check(dnnl_primitive_attr_set_output_scales(handle, 1, 0, &scale), "setting the output scale")
        }
        if let q = quantization {
            // One scale for the whole output (mask 0) or one per channel, dimension 1 (mask 2).
            try check(dnnl_primitive_attr_set_output_scales(handle, Int64(q.outputScales.count), q.outputScales.count == 1 ? 0 : 2, q.outputScales),
                      "setting the output scales")
            for (arg, zero) in [(DNNL_ARG_SRC, q.sourceZeroPoint), (DNNL_ARG_DST, q.destinationZeroPoint)] where zero != 0 {
                var z = zero
                try check(dnnl_primitive_attr_set_zero_points(handle, arg, 1, 0, &z), "setting a zero point")
            }
        }
        var ops: dnnl_post_ops_t?
        try check(dnnl_post_ops_create(&ops), "creating post-ops")
        defer { dnnl_post_ops_destroy(ops) }
        if var add { try check(dnnl_post_ops_append_binary(ops, dnnl_binary_add, &add), "appending a binary addition") }
        if let inner = quantization?.intermediate {
            try check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_round, 0, 0), "appending a rounding")
            try check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_clip, inner.low, inner.high), "appending a saturation")
            try check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_linear, inner.rescale, 0), "appending a rescaling")
        }
        func appendSum() throws {
            let q = quantization ?? DNNLQuantization(outputScales: [1])
            try check(dnnl_post_ops_append_sum_v3(ops, q.sumScale, q.sumZeroPoint, q.sumType), "appending the residual sum")
        }
        if sum && !sumAfterActivation { try appendSum() }
        for (alg, alpha, beta) in try Self.eltwise(activation, exactNonFinite: exactNonFinite) {
            try check(dnnl_post_ops_append_eltwise(ops, 1, alg, alpha, beta), "appending the activation")
        }
        if sum && sumAfterActivation { try appendSum() }
        if let scale = quantization?.finalScale {
            try check(dnnl_post_ops_append_eltwise(ops, 1, dnnl_eltwise_linear, scale, 0), "appending the output scale")
        }
        try check(dnnl_primitive_attr_set_post_ops(handle, ops), "setting post-ops")
    }

    deinit { dnnl_primitive_attr_destroy(handle) }

    /// The eltwise steps clamping to [lo, hi]. oneDNN's relu (α = 0), clip and bounded relu
    /// are one x86 max or min, which returns the bound for NaN: exact on every other value
    /// (±∞ included), so they serve when the input holds no NaN (`exactNonFinite` false).
    /// Otherwise the steps keep NaN NaN as ONNX Runtime's Relu and Clip do: oneDNN's ELU
    /// with α = 0 is relu(x) exactly (x where x > 0, else 0 · (eˣ − 1): NaN for NaN, −0
    /// for −∞), + 0 turns its −0 into 0, and a bound other than 0 is a shift around it,
    /// min(y, hi) = hi − relu(hi − y), exact up to the rounding of hi − y (half an ulp of
    /// hi). That form costs an exponential per element: MobileNetV2's ReLU6 convolutions
    /// took 1.7× as long.
    static func clip(_ lo: Float, _ hi: Float, exactNonFinite: Bool) -> [(dnnl_alg_kind_t, Float, Float)] {
        let hasLow = lo > -.greatestFiniteMagnitude, hasHigh = hi < .greatestFiniteMagnitude
        guard exactNonFinite else {
            return !hasLow && !hasHigh ? [(dnnl_eltwise_linear, 1, 0)] : lo == 0 && !hasHigh ? [(dnnl_eltwise_relu, 0, 0)] : [(dnnl_eltwise_clip_v2, lo, hi)]
        }
        let relu: (dnnl_alg_kind_t, Float, Float) = (dnnl_eltwise_elu, 0, 0)
        var steps: [(dnnl_alg_kind_t, Float, Float)] = []
        if hasLow {
            // max(x, lo) = relu(x − lo) + lo; the bound is added back by the last step.
            if lo != 0 { steps.append((dnnl_eltwise_linear, 1, -lo)) }
            steps.append(relu)
            if !hasHigh { return steps + [(dnnl_eltwise_linear, 1, lo)] }
        }
        guard hasHigh else { return steps.isEmpty ? [(dnnl_eltwise_linear, 1, 0)] : steps }
        // y = max(x, lo) − lo, so min(y + lo, hi) = hi − relu((hi − lo) − y).
        let shift = hasLow ? hi - lo : hi
        return steps + [(dnnl_eltwise_linear, -1, shift), relu, (dnnl_eltwise_linear, -1, hi)]
    }

    /// Whether oneDNN computes these eltwise steps right as post-ops: its JIT kernels give
    /// every `linear` step of a chain the first one's coefficients (seen on convolutions
    /// and matmuls), so a chain with two different ones runs as separate steps instead.
    static func fusable(_ steps: [(dnnl_alg_kind_t, Float, Float)]) -> Bool {
        let linear = steps.filter { $0.0 == dnnl_eltwise_linear }
        return linear.allSatisfy { $0.1 == linear[0].1 && $0.2 == linear[0].2 }
    }

    /// Whether an activation has a faster form for inputs without NaN (`clip`).
    static func hasFiniteForm(_ a: Activation?) -> Bool {
        switch a {
        case .relu?, .clip?, .hardSigmoid?: true
        default: false
        }
    }

    /// The eltwise post-ops computing an activation; `exactNonFinite` as in `clip`.
    static func eltwise(_ a: Activation?, exactNonFinite: Bool) throws -> [(dnnl_alg_kind_t, Float, Float)] {
        guard let a else { return [] }
        switch a {
        case .relu: return clip(0, .infinity, exactNonFinite: exactNonFinite)
        case .leakyRelu(let alpha): return [(dnnl_eltwise_relu, alpha, 0)]
        case .clip(let lo, let hi): return clip(lo, hi, exactNonFinite: exactNonFinite)
        case .sigmoid: return [(dnnl_eltwise_logistic, 0, 0)]
        case .tanh: return [(dnnl_eltwise_tanh, 0, 0)]
        case .hardSigmoid(let alpha, let beta): return [(dnnl_eltwise_linear, alpha, beta)] + clip(0, 1, exactNonFinite: exactNonFinite)
        case .hardSwish: return [(dnnl_eltwise_hardswish, 0, 0)]
        case .elu(let alpha): return [(dnnl_eltwise_elu, alpha, 0)]
        case .mish: return [(dnnl_eltwise_mish, 0, 0)]
        case .gelu: return [(dnnl_eltwise_gelu_erf, 0, 0)]
        case .geluTanh: return [(dnnl_eltwise_gelu_tanh, 0, 0)]
        case .silu: return [(dnnl_eltwise_swish, 1, 0)]
        case .swish(let alpha): return [(dnnl_eltwise_swish, alpha, 0)]
        }
    }
}

/// Reorders row-major `values` described by `user` into a new 64-byte-aligned
/// buffer in the layout `packed` (a primitive's preferred weight layout). The
/// caller owns the buffer.
func prepack(_ values: [Float], from user: dnnl_memory_desc_t, to packed: dnnl_memory_desc_t, engine: DNNLEngine) throws -> UnsafeMutableRawPointer {
    var target = packed
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(anvil_dnnl_md_size(&target), 64), alignment: 64)
    do {
        // The reorder only reads the source: no copy of the weights.
        try values.withUnsafeBytes { raw in
            let from = try DNNLMemory(user, engine: engine, data: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            let to = try DNNLMemory(packed, engine: engine, data: buffer)
            let reorder = try reorderPrimitive(from: user, to: packed, engine: engine)
            try reorder.execute(try DNNLStream(engine: engine), [(DNNL_ARG_FROM, from), (DNNL_ARG_TO, to)])
        }
    } catch {
        buffer.deallocate()
        throw error
    }
    return buffer
}

/// A reorder primitive between two layouts (user scratchpad mode).
func reorderPrimitive(from: dnnl_memory_desc_t, to: dnnl_memory_desc_t, engine: DNNLEngine, quantization: DNNLQuantization? = nil) throws -> DNNLPrimitive {
    var pd: dnnl_primitive_desc_t?
    var a = from, b = to
    DNNLPrimitive.creation.enter(exclusive: from.data_type == dnnl_bf16 || to.data_type == dnnl_bf16)
    defer { DNNLPrimitive.creation.leave() }
    let attributes = try DNNLAttributes(quantization: quantization)
    try check(dnnl_reorder_primitive_desc_create(&pd, &a, engine.handle, &b, engine.handle, attributes.handle), "preparing a reorder")
    return try DNNLPrimitive(descriptor: pd!)
}

/// A readers-writer lock: many holders sharing it, or one alone.
final class SharedLock: @unchecked Sendable {
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func enter(exclusive: Bool) {
        if exclusive { pthread_rwlock_wrlock(lock) } else { pthread_rwlock_rdlock(lock) }
    }

    func leave() { pthread_rwlock_unlock(lock) }
}
