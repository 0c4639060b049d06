import AnvilCore
import COneDNN
import Foundation

/// What convolution and matmul share: a oneDNN primitive with prepacked constant
/// weights, a bias, and a residual sum and activation fused as post-ops.
final class DNNLWeightedPrimitive {
    let primitive: DNNLPrimitive
    let engine: DNNLEngine
    /// Whether the destination must hold the residual before execution (sum post-op).
    let residual: Bool
    let weightDescriptor: dnnl_memory_desc_t
    let packedWeights: UnsafeMutableRawPointer
    /// False when the packed weights lie in an engine file's mapping (used in place).
    let ownsWeights: Bool
    /// The packed weights as an engine file can store them; nil when they cannot be stored.
    let storable: PackedWeights?
    /// The FP16 copy `storable` points to, when this kernel made it.
    private var halfBuffer: UnsafeMutableRawPointer?
    let biasDescriptor: dnnl_memory_desc_t
    /// The bias values, 64-byte aligned, at a fixed address for prebound memory objects.
    let bias: UnsafeMutableBufferPointer<Float>
    /// Elements of the destination.
    let outputCount: Int
    /// In-place eltwise primitives applying the activation after the primitive, when it is
    /// not fused: a kernel that cannot fuse it (oneDNN's Winograd convolutions fuse ReLU but
    /// not SiLU, `separateActivation`) or a chain oneDNN computes wrongly (`DNNLAttributes.fusable`).
    let activationSteps: [DNNLPrimitive]

    /// Creates the primitive for `operation` (a oneDNN op descriptor), then takes the
    /// weights in its preferred layout: a prepacked copy from the engine file when one
    /// has that layout (used in place), else `weights` (row-major, described by
    /// `userWeights`) reordered into it.
    init<Operation>(_ operation: Operation, what: String, engine: DNNLEngine, activation: Activation?, exactNonFinite: Bool = true,
                    separateActivation: Bool = false, residual: Bool, residualAfterActivation: Bool = false, reducedPrecision: Bool = false,
                    quantization: DNNLQuantization? = nil,
                    weights: KernelWeights, userWeights: dnnl_memory_desc_t, bias: [Float], biasDescriptor: dnnl_memory_desc_t, outputCount: Int) throws {
        let steps = try DNNLAttributes.eltwise(activation, exactNonFinite: exactNonFinite)
        let fused = !separateActivation && DNNLAttributes.fusable(steps)
        // An 8-bit result has no separate activation step: the activation must be a post-op.
        if quantization != nil, !fused, activation != nil {
            throw AnvilError.invalidTensor(name: "oneDNN", reason: "the activation of an INT8 \(what) must be one fused post-op")
        }
        // A residual added after the activation needs the activation before it, in the kernel.
        if residual, residualAfterActivation, !fused, activation != nil {
            throw AnvilError.invalidTensor(name: "oneDNN", reason: "a \(what) adding its residual after the activation must fuse the activation")
        }
        let attributes = try DNNLAttributes(sum: residual, activation: fused ? activation : nil, exactNonFinite: exactNonFinite, quantization: quantization,
                                            sumAfterActivation: residualAfterActivation)
        primitive = try DNNLPrimitive(operation, attributes: attributes, engine: engine, what: what, reducedPrecision: reducedPrecision)
        var out = primitive.query(dnnl_query_dst_md)
        activationSteps = fused ? [] : try steps.map { alg, alpha, beta in
            var op = dnnl_eltwise_desc_t()
            try check(dnnl_eltwise_forward_desc_init(&op, dnnl_forward_inference, alg, &out, alpha, beta), "describing the activation")
            return try DNNLPrimitive(op, attributes: DNNLAttributes(), engine: engine, what: "activation")
        }
        self.engine = engine
        self.residual = residual
        weightDescriptor = primitive.query(dnnl_query_weights_md)
        var target = weightDescriptor
        let bytes = anvil_dnnl_md_size(&target)
        let user = LayoutCode(userWeights), packed = LayoutCode(weightDescriptor)
        // FP16 storage: the same layout with 2-byte elements (Winograd's transformed weights keep FP32).
        let halfLayout = weights.half && weightDescriptor.data_type == dnnl_f32 && packed?.isWinograd == false ? packed.flatMap { $0.retyped(dnnl_f16) } : nil
        let data: UnsafeMutableRawPointer
        var halfCopy: PackedWeights?
        if let user, let packed, let stored = weights.packed.first(where: { $0.user == user && $0.packed == packed && $0.data.count >= bytes }) {
            data = UnsafeMutableRawPointer(mutating: stored.data.baseAddress!)
            ownsWeights = false
        } else if let user, let halfLayout, let stored = weights.packed.first(where: { $0.user == user && $0.packed == halfLayout && $0.data.count >= bytes / 2 }) {
            data = .allocate(byteCount: max(bytes, 64), alignment: 64)
            anvil_f16_to_f32(stored.data.baseAddress!.assumingMemoryBound(to: UInt16.self), Int64(bytes / 4), data.assumingMemoryBound(to: Float.self))
            ownsWeights = true
            halfCopy = stored
        } else {
            data = try prepack(try weights.plain().floats, from: userWeights, to: weightDescriptor, engine: engine)
            ownsWeights = true
        }
        packedWeights = data
        // Float constants only: 8-bit weights are stored as they are and packed when the engine loads.
        if weights.exact, weights.dataType == .float, !weights.name.isEmpty, let user, let packed {
            if let halfLayout {
                if halfCopy == nil {
                    // The packed values are FP16 values already (`KernelWeights.halved`): narrowing is exact.
                    let half = UnsafeMutableRawPointer.allocate(byteCount: max(bytes / 2, 64), alignment: 64)
                    anvil_f32_to_f16(data.assumingMemoryBound(to: Float.self), Int64(bytes / 4), half.assumingMemoryBound(to: UInt16.self))
                    halfBuffer = half
                    halfCopy = PackedWeights(constant: weights.name, user: user, packed: halfLayout, data: UnsafeRawBufferPointer(start: half, count: bytes / 2))
                }
                storable = halfCopy
            } else {
                storable = PackedWeights(constant: weights.name, user: user, packed: packed, data: UnsafeRawBufferPointer(start: data, count: bytes))
            }
        } else {
            storable = nil
        }
        self.bias = .allocate(capacity: max(bias.count, 1))
        _ = self.bias.initialize(from: bias)
        self.biasDescriptor = biasDescriptor
        self.outputCount = outputCount
    }

    deinit {
        if ownsWeights { packedWeights.deallocate() }
        halfBuffer?.deallocate()
        bias.deallocate()
    }

    /// Memory objects for the weights and bias (the source and destination come from the caller);
    /// they keep this kernel, which owns the weights and bias, alive (a plan's steps hold them
    /// after the shared kernel cache may have dropped it).
    func constantArguments() throws -> [(Int32, DNNLMemory)] {
        [(DNNL_ARG_WEIGHTS, try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights, owner: self)),
         (DNNL_ARG_BIAS, try DNNLMemory(biasDescriptor, engine: engine, data: UnsafeMutableRawPointer(bias.baseAddress!), owner: self))]
    }

    var implementation: String { primitive.implementation }

    /// Executes on buffers in the primitive's source and destination layouts; with a
    /// residual, `output` must already hold it (the sum post-op accumulates into it).
    func execute(stream: DNNLStream, input: UnsafeMutableRawPointer, output: UnsafeMutableRawPointer) throws {
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: input)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: output)
        try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_DST, dst)] + constantArguments())
        for step in activationSteps { try step.execute(stream, [(DNNL_ARG_SRC, dst), (DNNL_ARG_DST, dst)]) }
    }

    /// Plan steps for the layer: the primitive on `source` into `destination`, then the
    /// separate activation steps in place.
    func planSteps(layer: String, source: PlanValue, destination: PlanValue, copies: [(from: PlanValue, to: PlanValue)]) throws -> [PrimitiveStep] {
        let dst = primitive.query(dnnl_query_dst_md)
        return [PrimitiveStep(layer: layer, primitive: primitive, arguments: [(DNNL_ARG_SRC, source, primitive.query(dnnl_query_src_md)), (DNNL_ARG_DST, destination, dst)],
                              fixed: try constantArguments(), copies: copies)]
            + activationSteps.map { PrimitiveStep(layer: layer, primitive: $0, arguments: [(DNNL_ARG_SRC, destination, dst), (DNNL_ARG_DST, destination, dst)]) }
    }

    /// Runs on plain buffers, copying the residual into the output first.
    func run(stream: DNNLStream, input: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>, what: String) throws {
        guard primitive.query(dnnl_query_src_md).data_type == dnnl_f32 else {
            throw AnvilError.invalidTensor(name: what, reason: "the kernel reads BF16, not FP32 buffers")
        }
        if self.residual {
            guard let residual else { throw AnvilError.invalidTensor(name: what, reason: "residual input missing") }
            output.update(from: residual, count: outputCount)
        }
        try execute(stream: stream, input: UnsafeMutableRawPointer(mutating: input), output: UnsafeMutableRawPointer(output))
    }

    /// Runs on tensors, allocating the output of `shape`.
    func run(stream: DNNLStream, _ x: Tensor, residual: Tensor?, outputShape shape: [Int], what: String) throws -> Tensor {
        // The kernel reads exactly its planned sizes: a tensor of another size (a damaged engine's) is refused.
        var src = primitive.query(dnnl_query_src_md)
        let bf16 = src.data_type == dnnl_bf16, elementBytes = bf16 ? 2 : 4
        guard x.count * elementBytes == anvil_dnnl_md_size(&src) else {
            throw AnvilError.invalidTensor(name: what, reason: "input \(x.shape) does not fit the kernel (\(anvil_dnnl_md_size(&src) / elementBytes) values)")
        }
        if let residual, residual.count != outputCount {
            throw AnvilError.invalidTensor(name: what, reason: "residual \(residual.shape) has \(residual.count) values, the output \(outputCount)")
        }
        let count = try MemoryPolicy.checkedCount(shape, .float, for: "\(what)'s output")
        guard count == outputCount else {
            throw AnvilError.invalidTensor(name: what, reason: "output \(shape) does not fit the kernel (\(outputCount) values)")
        }
        if bf16 { return try runBF16(stream: stream, x, residual: residual, outputShape: shape) }
        var out = [Float](repeating: 0, count: count)
        let input = x.floats, sum = residual?.floats
        try input.withUnsafeBufferPointer { i in
            try out.withUnsafeMutableBufferPointer { o in
                if let sum {
                    try sum.withUnsafeBufferPointer { try run(stream: stream, input: i.baseAddress!, residual: $0.baseAddress!, output: o.baseAddress!, what: what) }
                } else {
                    try run(stream: stream, input: i.baseAddress!, residual: nil, output: o.baseAddress!, what: what)
                }
            }
        }
        return try Tensor(floats: out, shape: shape)
    }

    /// A BF16 kernel on FP32 tensors: the input rounded to BF16; the output (and the residual it
    /// starts from) in the kernel's output type, BF16 or FP32, widened.
    private func runBF16(stream: DNNLStream, _ x: Tensor, residual: Tensor?, outputShape shape: [Int]) throws -> Tensor {
        var input = x.floats.map(BFloat16Bits.fromFloat)
        func run<Element>(into out: inout [Element]) throws {
            try input.withUnsafeMutableBytes { i in
                try out.withUnsafeMutableBytes { o in try self.execute(stream: stream, input: i.baseAddress!, output: o.baseAddress!) }
            }
            try stream.wait()
        }
        if primitive.query(dnnl_query_dst_md).data_type == dnnl_f32 {
            var out = residual?.floats ?? [Float](repeating: 0, count: outputCount)
            try run(into: &out)
            return try Tensor(floats: out, shape: shape)
        }
        var out = residual.map { $0.floats.map(BFloat16Bits.fromFloat) } ?? [UInt16](repeating: 0, count: outputCount)
        try run(into: &out)
        return try Tensor(floats: out.map(BFloat16Bits.toFloat), shape: shape)
    }
}
