import AnvilCore

/// Object detection post-processing.
func registerDetection(_ b: inout KernelTableBuilder) {
    b.add1("NonMaxSuppression", since: 10) { ctx in
        let maxPerClass = ctx.optionalInput(2).map { Int(clamping: $0.int64s.first ?? 0) } ?? 0
        let iou = ctx.optionalInput(3).map { $0.count > 0 ? $0.double(at: 0) : 0 } ?? 0
        let threshold = ctx.optionalInput(4).flatMap { $0.count > 0 ? $0.double(at: 0) : nil }
        return try named(ctx) {
            try Detection.nonMaxSuppression(boxes: ctx.input(0), scores: ctx.input(1), maxPerClass: maxPerClass, iouThreshold: iou,
                                            scoreThreshold: threshold, centerPointBox: ctx.attributes.int("center_point_box", 0) == 1)
        }
    }
    b.add1("RoiAlign", since: 10) { ctx in
        let p = try RoiAlignParameters(ctx.attributes, opset: ctx.opset)
        return try named(ctx) { try Detection.roiAlign(ctx.input(0), rois: ctx.input(1), batchIndices: ctx.input(2), p) }
    }
}
