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
    }
    let kernel: Kernel
    /// The kernel kind: convolution, matmul or roi align.
    public var kind: KernelKind {
        switch kernel {
        case .convolution: .convolution
        case .matmul: .matmul
        case .roiAlign: .roiAlign
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
        }
    }
}
