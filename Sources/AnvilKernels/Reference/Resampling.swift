import AnvilCore
import Foundation

/// Reference kernel for Resize / Upsample. Interpolation is separable, so the
/// tensor is resampled one axis at a time: each output index along an axis reads
/// a few neighbours with weights that depend on the mode.
public enum Resampling {
    /// How an output coordinate maps back into the input (ONNX coordinate_transformation_mode).
    public enum CoordinateMode: String, Sendable {
        case halfPixel = "half_pixel", halfPixelSymmetric = "half_pixel_symmetric", pytorchHalfPixel = "pytorch_half_pixel"
        case alignCorners = "align_corners", asymmetric = "asymmetric", tfCropAndResize = "tf_crop_and_resize"
    }

    /// Interpolation kind.
    public enum Mode: String, Sendable { case nearest, linear, cubic }

    /// Rounding of nearest mode.
    public enum NearestMode: String, Sendable {
        case roundPreferFloor = "round_prefer_floor", roundPreferCeil = "round_prefer_ceil", floor, ceil
    }

    public struct Parameters: Sendable {
        public var mode: Mode = .nearest
        public var coordinates: CoordinateMode = .halfPixel
        public var nearest: NearestMode = .roundPreferFloor
        public var cubicA: Double = -0.75
        public var excludeOutside = false
        public var extrapolationValue: Double = 0
        public var antialias = false
        public init() {}
    }

    /// Resizes `x` to `outputShape`, with `scales` per axis and an optional region of
    /// interest (`roi`: starts then ends, per axis, for tf_crop_and_resize).
    public static func resize(_ x: Tensor, outputShape: [Int], scales: [Double], roi: [Double]?, _ p: Parameters) throws -> Tensor {
        guard outputShape.count == x.rank, scales.count == x.rank else {
            throw AnvilError.invalidTensor(name: "Resize", reason: "output shape \(outputShape) or scales \(scales) do not match rank \(x.rank)")
        }
        for (i, s) in scales.enumerated() where !(s > 0) && outputShape[i] != 0 {
            throw AnvilError.invalidTensor(name: "Resize", reason: "scale \(s) on axis \(i) must be positive")
        }
        var shape = x.shape
        var data = x.doubles
        for axis in 0..<x.rank {
            let r = roi.map { [$0[axis], $0[axis + x.rank]] }
            let identity = scales[axis] == 1 && outputShape[axis] == shape[axis] && (r == nil || (r![0] == 0 && r![1] == 1))
            if identity { continue }
            (data, shape) = resample(data, shape: shape, axis: axis, outSize: outputShape[axis], scale: scales[axis], roi: r, p)
        }
        if x.dataType.isInteger {
            // Saturate into the integer type, rounding to nearest even.
            let range: (Double, Double) = switch x.dataType {
            case .uint8: (0, 255)
            case .int8: (-128, 127)
            case .uint16: (0, 65535)
            case .int16: (-32768, 32767)
            case .int32: (-2147483648, 2147483647)
            default: (-9.2e18, 9.2e18)
            }
            return try Tensor(x.dataType, shape: shape, int64s: data.map { Tensor.int64(fromDouble: min(max($0.rounded(.toNearestOrEven), range.0), range.1)) })
        }
        return try Tensor(x.dataType, shape: shape, doubles: data)
    }

    /// Weights and neighbour indices for one output index.
    static func taps(x: Double, inSize: Int, scale: Double, _ p: Parameters) -> [(Int, Double)] {
        let isInteger = x == x.rounded(.down)
        // Prefer the pixel to the left of x: an integer x counts as ratio 1 from x - 1.
        let base = isInteger ? Int(x) - 1 : Int(x.rounded(.down))
        let ratio = isInteger ? 1.0 : x - x.rounded(.down)
        var coefficients: [Double]
        switch p.mode {
        case .nearest:
            let right: Bool = switch p.nearest {
            case .roundPreferFloor: ratio > 0.5
            case .roundPreferCeil: ratio >= 0.5
            case .floor: isInteger
            case .ceil: true
            }
            coefficients = right ? [0, 1] : [1, 0]
        case .linear:
            if p.antialias && scale < 1 {
                let start = Int((-1 / scale).rounded(.down)) + 1
                let n = 2 - 2 * start
                coefficients = (0..<n).map { max(0, min(1, 1 - abs((Double(start + $0) - ratio) * scale))) }
                let sum = coefficients.reduce(0, +)
                coefficients = coefficients.map { $0 / sum }
            } else {
                coefficients = [1 - ratio, ratio]
            }
        case .cubic:
            let a = p.cubicA
            if p.antialias && scale < 1 {
                func kernel(_ v: Double) -> Double {
                    let t = abs(v)
                    if t <= 1 { return (a + 2) * t * t * t - (a + 3) * t * t + 1 }
                    if t < 2 { return a * t * t * t - 5 * a * t * t + 8 * a * t - 4 * a }
                    return 0
                }
                let start = Int((-2 / scale).rounded(.down)) + 1
                let n = 2 - 2 * start
                coefficients = (0..<n).map { kernel(scale * (Double(start + $0) - ratio)) }
                let sum = coefficients.reduce(0, +)
                coefficients = coefficients.map { $0 / sum }
            } else {
                let r = ratio
                coefficients = [
                    ((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                    ((a + 2) * r - (a + 3)) * r * r + 1,
                    ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                    ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a,
                ]
            }
        }
        let n = coefficients.count
        let start = base - n / 2 + 1
        var taps = (0..<n).map { (start + $0, coefficients[$0]) }
        if p.excludeOutside {
            taps = taps.map { ($0.0, $0.0 < 0 || $0.0 >= inSize ? 0 : $0.1) }
            let sum = taps.reduce(0) { $0 + $1.1 }
            if sum != 0 { taps = taps.map { ($0.0, $0.1 / sum) } }
        }
        return taps.map { (min(max($0.0, 0), inSize - 1), $0.1) }
    }

    static func resample(_ data: [Double], shape: [Int], axis: Int, outSize: Int, scale: Double, roi: [Double]?, _ p: Parameters) -> ([Double], [Int]) {
        let inSize = shape[axis]
        let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *)
        var outShape = shape
        outShape[axis] = outSize
        var out = [Double](repeating: 0, count: outer * outSize * inner)
        guard inSize > 0 else { return (out, outShape) }
        let outWidth = scale * Double(inSize)
        for o in 0..<outSize {
            let y = Double(o)
            var extrapolate = false
            let x: Double
            switch p.coordinates {
            case .alignCorners: x = outWidth == 1 ? 0 : y * Double(inSize - 1) / (outWidth - 1)
            case .asymmetric: x = y / scale
            case .pytorchHalfPixel: x = outWidth == 1 ? -0.5 : (y + 0.5) / scale - 0.5
            case .halfPixel: x = (y + 0.5) / scale - 0.5
            case .halfPixelSymmetric:
                let adjustment = Double(outSize) / outWidth
                x = Double(inSize) / 2 * (1 - adjustment) + (y + 0.5) / scale - 0.5
            case .tfCropAndResize:
                let (r0, r1) = (roi?[0] ?? 0, roi?[1] ?? 1)
                var v = outWidth == 1 ? (r1 - r0) * Double(inSize - 1) / 2 : y * (r1 - r0) * Double(inSize - 1) / (outWidth - 1)
                v += r0 * Double(inSize - 1)
                extrapolate = v < 0 || v > Double(inSize - 1)
                x = v
            }
            let taps = extrapolate ? [] : taps(x: x, inSize: inSize, scale: scale, p)
            for a in 0..<outer {
                for i in 0..<inner {
                    var acc = 0.0
                    if extrapolate {
                        acc = p.extrapolationValue
                    } else {
                        for (k, w) in taps where w != 0 { acc += w * data[(a * inSize + k) * inner + i] }
                    }
                    out[(a * outSize + o) * inner + i] = acc
                }
            }
        }
        return (out, outShape)
    }
}
