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
}
