import AnvilCore

/// A layer run by a oneDNN kernel (or RoiAlign's Swift kernel) on plain tensors,
/// prepared for one input shape: the layer interpreter's fast path, for graphs the
/// planner does not take (control flow, strings) and for the first run of new dynamic
/// shapes. Whether oneDNN takes the layer is decided by the same specs the planner uses.
public final class FastLayer {
    enum Kernel {
        case convolution(DNNLConvolution)
        case matmul(DNNLMatMul, outputShape: [Int])
        /// Detectors' RoiAlign, whose graphs (torchvision's Faster R-CNN) hold If nodes
        /// the planner does not take.
        case roiAlign(RoiAlignParameters)
        /// QLinearConv and FusedQLinearConv: oneDNN's INT8 convolution, which runs channels-last.
        case quantizedConvolution(DNNLConvolution, outputType: DataType)
    }
    let kernel: Kernel
    /// The kernel kind: convolution, matmul or roi align.
    public var kind: KernelKind {
        switch kernel {
        case .convolution: .convolution
        case .matmul: .matmul
        case .roiAlign: .roiAlign
        case .quantizedConvolution: .quantizedConvolution
        }
    }
    /// The input shape it was prepared for.
    public let inputShape: [Int]
    /// The oneDNN implementation, for profiles.
    public var implementation: String {
        switch kernel {
        case .convolution(let c): c.implementation
        case .matmul(let m, _): m.implementation
        case .roiAlign: "swift"
        case .quantizedConvolution(let c, _): c.implementation
        }
    }

    init(_ kernel: Kernel, inputShape: [Int]) {
        self.kernel = kernel
        self.inputShape = inputShape
    }

    /// Prepares the kernel of a layer decided (or, while building, undecided) for a
    /// oneDNN convolution or matmul or for RoiAlign's Swift kernel, for an input of
    /// `inputShape`; nil when the layer is decided otherwise or the shape does not fit.
    public static func make(_ layer: Layer, constants: ConstantStore, inputShape: [Int], engine: DNNLEngine) throws -> FastLayer? {
        let kind = layer.decision?.kernel
        // oneDNN's reference implementations are never used: the Swift reference kernel runs those layers.
        if kind == nil || kind == .convolution, let spec = try ConvolutionSpec(layer, constants: constants, inputShape: inputShape) {
            let conv = try spec.make(ConvolutionTactic(layout: .plain), engine: engine)
            return conv.kernel.primitive.isReference ? nil : FastLayer(.convolution(conv), inputShape: inputShape)
        }
        if kind == nil || kind == .matmul, let spec = try MatMulSpec(layer, constants: constants, inputShape: inputShape) {
            let matmul = try spec.make(engine: engine)
            return matmul.kernel.primitive.isReference ? nil : FastLayer(.matmul(matmul, outputShape: spec.outputShape), inputShape: inputShape)
        }
        if kind == nil || kind == .quantizedConvolution, layer.opKey == "QLinearConv" || layer.opKey == "anvil.FusedQLinearConv",
           layer.present(2), let input = constants[layer.inputs[2]]?.dataType {
            // The residual's type: its zero point's, uint8 without one, float without a scale.
            let residual: DataType? = !layer.present(9) ? nil : !layer.present(10) ? .float : layer.present(11) ? constants[layer.inputs[11]]?.dataType : .uint8
            guard let spec = try QuantizedConvolutionSpec(layer, constants: constants, input: input, inputShape: inputShape, residualType: residual) else { return nil }
            let conv = try spec.make(engine: engine)
            return conv.kernel.primitive.isReference ? nil : FastLayer(.quantizedConvolution(conv, outputType: spec.outputType), inputShape: inputShape)
        }
        if kind == nil || kind == .roiAlign, layer.opType == "RoiAlign", layer.domain.isEmpty, inputShape.count == 4 {
            return FastLayer(.roiAlign(try RoiAlignParameters(layer.attributeReader, opset: layer.opset)), inputShape: inputShape)
        }
        return nil
    }

    /// Runs on the context's inputs.
    public func run(_ ctx: EvalContext, stream: DNNLStream) throws -> Tensor {
        let sum = ctx.inputs.count > 3 ? ctx.inputs[3] : nil
        switch kernel {
        case .convolution(let c): return try c.run(stream: stream, ctx.input(0), residual: sum)
        case .matmul(let m, let shape): return try m.run(stream: stream, ctx.input(0), residual: sum).reshaped(shape)
        case .roiAlign(let p):
            let (x, rois, indices) = (try ctx.input(0), try ctx.input(1), try ctx.input(2))
            if let y = try SwiftRoiAlign.run(p, layer: ctx.name, x: x, rois: rois, batchIndices: indices) { return y }
            return try named(ctx) { try Detection.roiAlign(x, rois: rois, batchIndices: indices, p) }
        case .quantizedConvolution(let c, let outputType):
            return try runChannelsLast(c, ctx.input(0), residual: ctx.inputs.count > 9 ? ctx.inputs[9] : nil, outputType: outputType, stream: stream)
        }
    }

    /// An INT8 convolution on plain tensors: the input (and residual) made channels-last, the
    /// kernel run on their bytes, the output made plain again.
    func runChannelsLast(_ c: DNNLConvolution, _ x: Tensor, residual: Tensor?, outputType: DataType, stream: DNNLStream) throws -> Tensor {
        let rank = x.rank
        guard rank >= 3, x.shape == inputShape, [.uint8, .int8].contains(x.dataType) else {
            throw AnvilError.invalidTensor(name: "QLinearConv", reason: "input \(x.shape) does not fit the kernel")
        }
        let toLast = [0] + Array(2..<rank) + [1], toFirst = [0, rank - 1] + Array(1..<(rank - 1))
        let shape = c.outputShape, lastShape = toLast.map { shape[$0] }
        func bytes(_ t: Tensor) -> [UInt8] {
            switch t.dataType {
            case .float: return t.floats.withUnsafeBytes { Array($0) }
            default: return t.int64s.map { UInt8(truncatingIfNeeded: $0) }
            }
        }
        var input = bytes(try Movement.transpose(x, perm: toLast))
        let size = outputType == .float ? 4 : 1
        var out = [UInt8](repeating: 0, count: shape.reduce(1, *) * size)
        if let residual {
            guard residual.shape == shape else { throw AnvilError.invalidTensor(name: "QLinearConv", reason: "residual \(residual.shape) does not fit the output \(shape)") }
            out = bytes(try Movement.transpose(residual, perm: toLast))
            guard out.count == shape.reduce(1, *) * size else { throw AnvilError.invalidTensor(name: "QLinearConv", reason: "the residual's type does not fit the output's") }
        }
        try input.withUnsafeMutableBytes { i in
            try out.withUnsafeMutableBytes { o in try c.kernel.execute(stream: stream, input: i.baseAddress!, output: o.baseAddress!) }
        }
        try stream.wait()
        let y: Tensor
        switch outputType {
        case .float: y = try Tensor(floats: out.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }, shape: lastShape)
        case .int8: y = try Tensor(.int8, shape: lastShape, int64s: out.map { Int64(Int8(bitPattern: $0)) })
        default: y = try Tensor(.uint8, shape: lastShape, int64s: out.map { Int64($0) })
        }
        return try Movement.transpose(y, perm: toFirst)
    }
}
