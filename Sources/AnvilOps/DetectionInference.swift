import AnvilCore
import AnvilIR
import AnvilKernels

/// Shape inference of the detection ops: NonMaxSuppression's data-dependent count, and
/// RoiAlign's [num_rois, C, output_height, output_width].
func registerDetectionInference(_ b: inout RegistryBuilder) {
    b.infer(["NonMaxSuppression"]) { ctx in [facts(.int64, [ctx.freshSymbol(), .known(3)])] }
    b.infer(["RoiAlign"]) { ctx in
        let p = try RoiAlignParameters(ctx.attributes, opset: ctx.opset)
        let x = ctx.dims(0), rois = ctx.dims(1), indices = ctx.dims(2)
        if let x, x.count != 4 { throw ctx.fail("X must be 4-D [N, C, H, W], got rank \(x.count)") }
        if let rois, rois.count != 2 || (rois[1].value.map { $0 != 4 } ?? false) {
            throw ctx.fail("rois must be [num_rois, 4], got [\(rois.map(\.description).joined(separator: ", "))]")
        }
        if let indices, indices.count != 1 { throw ctx.fail("batch_indices must be 1-D, got rank \(indices.count)") }
        var count = rois?[0] ?? indices?[0] ?? .unknown
        if count == .unknown, let n = indices?[0] { count = n }
        if let a = rois?[0].value, let c = indices?[0].value, a != c { throw ctx.fail("rois has \(a) rows but batch_indices has \(c) entries") }
        return [facts(ctx.type(0).elementType, [count, x?[1] ?? .unknown, .known(p.outputHeight), .known(p.outputWidth)])]
    }
}
