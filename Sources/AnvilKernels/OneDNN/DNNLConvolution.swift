import AnvilCore
import COneDNN

/// How a kernel's activations are laid out in memory.
public enum ActivationLayout: Sendable {
    /// Row-major NC… as ONNX defines tensors.
    case plain
    /// Whatever layout oneDNN's fastest implementation prefers (nChw16c on AVX-512);
    /// the caller reorders at layout boundaries (`DNNLReorder`).
    case blocked
}

/// A oneDNN convolution (1-D, 2-D or 3-D, grouped, dilated) with bias, residual
/// sum and activation fused as post-ops. Weights are reordered once, at creation,
/// into the layout the chosen implementation prefers.
public final class DNNLConvolution {
    /// The oneDNN implementation chosen ("brg:avx512_core", "jit:avx512_core" …).
    public let implementation: String
    public let outputShape: [Int]
    /// The input shape the primitive was made for.
    let inputShapeForLayout: [Int]
    let primitive: DNNLPrimitive
    let residual: Bool
    let engine: DNNLEngine
    let packedWeights: UnsafeMutableRawPointer
    let bias: [Float]?
    let weightDescriptor: dnnl_memory_desc_t

    /// Builds the primitive for one input shape.
    public init(engine: DNNLEngine, inputShape: [Int], weights: Tensor, bias: Tensor?, geometry g: WindowGeometry,
                group: Int, activation: Activation?, residual: Bool, layout: ActivationLayout = .plain) throws {
        let spatial = inputShape.count - 2
        guard (1...3).contains(spatial), weights.rank == inputShape.count, group > 0,
              inputShape[1] == weights.shape[1] * group, weights.shape[0] % group == 0 else {
            throw AnvilError.invalidTensor(name: "Conv", reason: "weights \(weights.shape) do not fit input \(inputShape) with group \(group)")
        }
        let cout = weights.shape[0]
        outputShape = [inputShape[0], cout] + g.output
        inputShapeForLayout = inputShape
        let plain: [dnnl_format_tag_t] = [dnnl_ncw, dnnl_nchw, dnnl_ncdhw]
        let tag = layout == .plain ? plain[spatial - 1] : dnnl_format_tag_any
        let src = try memoryDescriptor(inputShape, tag)
        let dst = try memoryDescriptor(outputShape, tag)
        // Grouped weights are [g, cout/g, cin/g, k…]: the same bytes as ONNX's [cout, cin/g, k…].
        let weightDims = group > 1 ? [group, cout / group] + Array(weights.shape.dropFirst()) : weights.shape
        let userTags: [dnnl_format_tag_t] = group > 1 ? [dnnl_goiw, dnnl_goihw, dnnl_goidhw] : [dnnl_oiw, dnnl_oihw, dnnl_oidhw]
        let userWeights = try memoryDescriptor(weightDims, userTags[spatial - 1])
        var anyWeights = try memoryDescriptor(weightDims, dnnl_format_tag_any)
        var biasDesc = try memoryDescriptor([cout], dnnl_x)
        var srcDesc = src, dstDesc = dst
        var desc = dnnl_convolution_desc_t()
        let s = g.strides.map { Int64($0) }, d = g.dilations.map { Int64($0) }
        let pb = g.padsBegin.map { Int64($0) }, pe = g.padsEnd.map { Int64($0) }
        try check(anvil_dnnl_conv_desc(&desc, &srcDesc, &anyWeights, &biasDesc, &dstDesc, Int32(spatial), s, d, pb, pe), "describing the convolution")
        let attributes = try DNNLAttributes(sum: residual, activation: activation)
        var pd: dnnl_primitive_desc_t?
        try check(dnnl_primitive_desc_create(&pd, &desc, attributes.handle, engine.handle, nil), "choosing a convolution implementation")
        primitive = try DNNLPrimitive(descriptor: pd!)
        implementation = primitive.implementation
        self.residual = residual
        self.engine = engine
        self.bias = bias?.floats ?? Array(repeating: 0, count: cout)
        // Prepack: reorder the weights into the primitive's layout once.
        weightDescriptor = primitive.query(dnnl_query_weights_md)
        packedWeights = try prepack(weights.floats, from: userWeights, to: weightDescriptor, engine: engine)
    }

    deinit { packedWeights.deallocate() }

    /// The layout the primitive reads its input in.
    public var inputDescriptor: DNNLLayout { DNNLLayout(primitive.query(dnnl_query_src_md)) }
    /// The layout the primitive writes its output in.
    public var outputDescriptor: DNNLLayout { DNNLLayout(primitive.query(dnnl_query_dst_md)) }

    /// Runs on `stream`. With a residual, `residual` is added before the activation.
    public func run(stream: DNNLStream, input: UnsafePointer<Float>, residual: UnsafePointer<Float>?, output: UnsafeMutablePointer<Float>) throws {
        let outCount = outputShape.reduce(1, *)
        if self.residual {
            guard let residual else { throw AnvilError.invalidTensor(name: "Conv", reason: "residual input missing") }
            // oneDNN's sum post-op accumulates into the destination.
            output.update(from: residual, count: outCount)
        }
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: UnsafeMutableRawPointer(mutating: input))
        let weights = try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: UnsafeMutableRawPointer(output))
        var biasValues = bias ?? []
        try biasValues.withUnsafeMutableBytes { b in
            let biasMemory = try DNNLMemory(try memoryDescriptor([outputShape[1]], dnnl_x), engine: engine, data: b.baseAddress)
            try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_BIAS, biasMemory), (DNNL_ARG_DST, dst)])
            try stream.wait()
        }
    }

    /// Runs on buffers already in the primitive's layouts; with a residual, `output`
    /// must already hold it (the sum post-op accumulates into the destination).
    func runInPlace(stream: DNNLStream, input: UnsafeMutableRawPointer, output: UnsafeMutableRawPointer) throws {
        let src = try DNNLMemory(primitive.query(dnnl_query_src_md), engine: engine, data: input)
        let weights = try DNNLMemory(weightDescriptor, engine: engine, data: packedWeights)
        let dst = try DNNLMemory(primitive.query(dnnl_query_dst_md), engine: engine, data: output)
        var biasValues = bias ?? []
        try biasValues.withUnsafeMutableBytes { b in
            let biasMemory = try DNNLMemory(try memoryDescriptor([outputShape[1]], dnnl_x), engine: engine, data: b.baseAddress)
            try primitive.execute(stream, [(DNNL_ARG_SRC, src), (DNNL_ARG_WEIGHTS, weights), (DNNL_ARG_BIAS, biasMemory), (DNNL_ARG_DST, dst)])
            try stream.wait()
        }
    }

    /// Convenience: runs on tensors (allocates the output).
    public func run(stream: DNNLStream, _ x: Tensor, residual: Tensor? = nil) throws -> Tensor {
        var out = [Float](repeating: 0, count: outputShape.reduce(1, *))
        let input = x.floats
        let sum = residual?.floats
        try input.withUnsafeBufferPointer { i in
            try out.withUnsafeMutableBufferPointer { o in
                if let sum {
                    try sum.withUnsafeBufferPointer { s in try run(stream: stream, input: i.baseAddress!, residual: s.baseAddress!, output: o.baseAddress!) }
                } else {
                    try run(stream: stream, input: i.baseAddress!, residual: nil, output: o.baseAddress!)
                }
            }
        }
        return try Tensor(floats: out, shape: outputShape)
    }
}
