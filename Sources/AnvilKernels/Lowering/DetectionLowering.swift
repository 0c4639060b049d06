import AnvilCore
import Foundation

/// Detection layers on Swift kernels: RoiAlign (`SwiftRoiAlign`), reading the feature
/// map in the layout its producer left it in.
enum DetectionLowering {
    static let entries = [
        LoweringEntry(kind: .roiAlign, ops: ["RoiAlign"], output: .plain, lower: roiAlign),
    ]

    /// Float RoiAlign with rois [R, 4] and int64 (or int32) batch indices [R]; the
    /// indices and rois are checked at run time, naming the layer.
    static func roiAlign(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x0 = l.value(0), x0.dataType == .float, x0.shape.count == 4, let rois0 = try l.operand(1), rois0.dataType == .float,
              let indices0 = try l.operand(2), indices0.dataType == .int64 || indices0.dataType == .int32 else { return nil }
        let parameters = try RoiAlignParameters(l.attributes, opset: l.layer.opset)
        let (n, c, h, w) = (x0.shape[0], x0.shape[1], x0.shape[2], x0.shape[3]), count = rois0.shape.first ?? 0
        guard rois0.shape == [count, 4], indices0.shape == [count], h > 0, w > 0,
              try l.outputType() == (.float, [count, c, parameters.outputHeight, parameters.outputWidth]) else { return nil }
        var x = x0, layout = Layout.of(x0.layout, shape: x0.shape)
        if layout == .opaque || layout == .preferred { x = try l.plan.plain(x0); layout = .plain }
        guard let addressing = SwiftRoiAlign.Addressing(layout, c: c, pixels: h * w) else { return nil }
        let rois = try l.plan.plain(rois0), indices = try l.plan.plain(indices0)
        let problem = SwiftRoiAlign.Problem(layer: l.layer.name, n: n, c: c, h: h, w: w, rois: count, parameters: parameters,
                                            addressing: addressing, wideIndices: indices.dataType == .int64)
        let row = SwiftRoiAlign.scratchRow(c: c, addressing: addressing)
        let scratch = l.plan.ownedFloats(row * ProcessInfo.processInfo.activeProcessorCount)
        let out = l.plan.newValue(l.layer.outputs[0], .float, [count, c, parameters.outputHeight, parameters.outputWidth])
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x, rois, indices], writes: [out]) { p in
            try SwiftRoiAlign.run(problem, x: p.address(x).assumingMemoryBound(to: Float.self), rois: p.address(rois).assumingMemoryBound(to: Float.self),
                                  indices: p.address(indices), into: p.address(out).assumingMemoryBound(to: Float.self), scratch: scratch)
        })
        return l.decided(.roiAlign)
    }
}
