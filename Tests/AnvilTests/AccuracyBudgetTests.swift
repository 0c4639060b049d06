import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilONNX
import AnvilOps
import AnvilRuntime
import Foundation
import XCTest

/// Calibration data (--calib) and the accuracy budget (--accuracyBudget, --best): bad data
/// refused naming the file; the builder moves layers back to FP32 until the budget holds.
final class AccuracyBudgetTests: XCTestCase {
    let cnn = TestSupport.fixture("cnn/model.onnx")

    /// A folder of calibration samples for the cnn fixture (input "image", [1, 3, 32, 32]).
    func calibration(_ count: Int, seed: UInt64 = 1) throws -> String {
        let folder = try TestSupport.temporaryFolder()
        var rng = SeededGenerator(seed: seed)
        for i in 0..<count {
            let t = try Tensor(floats: (0..<(3 * 32 * 32)).map { _ in Float.random(in: -2...2, using: &rng) }, shape: [1, 3, 32, 32])
            try FileManager.default.createDirectory(atPath: "\(folder)/test_data_set_\(i)", withIntermediateDirectories: true)
            try Data(try TensorFiles.encodeTensorProto(t, name: "image")).write(to: URL(fileURLWithPath: "\(folder)/test_data_set_\(i)/input_0.pb"))
        }
        return folder
    }

    func testBadCalibrationDataIsRefusedNamingTheFile() throws {
        let declared = try ONNXImporter.load(path: cnn).graph.runtimeInputs.map { ($0.name, $0.type) }
        let good = try calibration(2)
        defer { try? FileManager.default.removeItem(atPath: good) }
        XCTAssertEqual(try CalibrationData.load(good, inputs: declared).samples.count, 2)
        let folder = try TestSupport.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        func expectFailure(_ path: String, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try CalibrationData.load(path, inputs: declared), file: file, line: line) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)", file: file, line: line)
            }
        }
        func write(_ name: String, _ arrays: [(String, Tensor)]) throws -> String {
            let path = "\(folder)/\(name)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            for (i, (n, t)) in arrays.enumerated() {
                try Data(try TensorFiles.encodeTensorProto(t, name: n)).write(to: URL(fileURLWithPath: "\(path)/input_\(i).pb"))
            }
            return path
        }
        let image = try Tensor(floats: Array(repeating: 0.5, count: 3 * 32 * 32), shape: [1, 3, 32, 32])
        try FileManager.default.createDirectory(atPath: folder + "/empty", withIntermediateDirectories: true)
        expectFailure(folder + "/empty", "holds no calibration data")
        expectFailure(folder + "/missing", "no such file or folder")
        expectFailure(try write("shape", [("image", try Tensor(floats: Array(repeating: 0, count: 3 * 16 * 16), shape: [1, 3, 16, 16]))]), "shape")
        expectFailure(try write("type", [("image", try Tensor(int64s: Array(repeating: 0, count: 3 * 32 * 32), shape: [1, 3, 32, 32]))]), "element type")
        expectFailure(try write("extra", [("image", image), ("other", image)]), "'other', which is not a model input")
        var nan = image.floats
        nan[17] = .nan
        expectFailure(try write("nan", [("image", try Tensor(floats: nan, shape: [1, 3, 32, 32]))]), "holds NaN")
        expectFailure(try write("nan", [("image", try Tensor(floats: nan, shape: [1, 3, 32, 32]))]), "\(folder)/nan")
        expectFailure(TestSupport.fixture("npz/extra.npz"), "which is not a model input")
        XCTAssertEqual(try CalibrationData.load(TestSupport.fixture("npz/cnn_inputs.npz"), inputs: declared).samples.count, 1)
    }

    func testBudgetMovesLayersBackUntilItHolds() throws {
        try XCTSkipUnless(CPUFeatures.host.contains(.avx512Bf16), "this CPU has no AVX-512 BF16")
        let model = try ONNXImporter.load(path: cnn)
        let folder = try calibration(3)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let samples = try CalibrationData.load(folder, inputs: model.graph.runtimeInputs.map { ($0.name, $0.type) }).samples.map(\.inputs)
        var builder = EngineBuilder()
        builder.precision = PrecisionPolicy(bf16: true, keepEnds: false)
        builder.calibration = samples
        // A loose budget keeps every layer in BF16 …
        builder.budget = .cosine(0.9)
        let loose = try builder.build(model, name: "cnn")
        XCTAssertTrue(loose.precisionChoices.allSatisfy { $0.precision == .bf16 }, "\(loose.precisionChoices)")
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(loose.measuredBudget), 0.9)
        // … one BF16 cannot meet moves every layer back, each with its reason, and the engine is the FP32 one.
        builder.budget = .relativeError(0)
        let strict = try builder.build(model, name: "cnn")
        XCTAssertFalse(strict.precisionChoices.isEmpty)
        XCTAssertTrue(strict.precisionChoices.allSatisfy { $0.precision == .fp32 && $0.reason.hasPrefix("moved to FP32 in round") }, "\(strict.precisionChoices)")
        XCTAssertEqual(strict.measuredBudget, 0)
        // A user's --layerPrecisions pin is kept whatever the budget: a budget it breaks stops the build …
        let pinned = loose.precisionChoices[0].layer
        builder.precision.layerPrecisions = [pinned: .bf16]
        XCTAssertThrowsError(try builder.build(model, name: "cnn")) { XCTAssertTrue("\($0)".contains("cannot be met"), "\($0)") }
        // … and one it keeps holds with the pin in place.
        builder.budget = .cosine(0.9)
        let kept = try builder.build(model, name: "cnn")
        let choice = try XCTUnwrap(kept.precisionChoices.first { $0.layer == pinned })
        XCTAssertEqual(choice.precision, .bf16)
        XCTAssertEqual(choice.reason, "--layerPrecisions")
        // top1 on the classifier's logits.
        builder.precision.layerPrecisions = [:]
        builder.budget = .top1(1)
        XCTAssertEqual(try builder.build(model, name: "cnn").measuredBudget, 1)
    }

    func testBudgetFlagsOnTheCommandLine() throws {
        try XCTSkipUnless(CPUFeatures.host.contains(.avx512Bf16), "this CPU has no AVX-512 BF16")
        let calib = try calibration(2)
        let folder = try TestSupport.temporaryFolder()
        defer { for f in [calib, folder] { try? FileManager.default.removeItem(atPath: f) } }
        let best = try TestSupport.run(["build", cnn, "-o", folder + "/best.anvil", "--best", "--calib", calib, "--verbose"])
        XCTAssertEqual(best.status, 0, best.stderr)
        XCTAssertTrue(best.stdout.contains("within the budget cosine ≥ 0.999"), best.stdout)
        for (arguments, message) in [(["--best"], "give --calib DIR"), (["--bf16", "--accuracyBudget", "cosine=0.99"], "give --calib DIR"),
                                     (["--calib", calib], "--calib is read by --int8, --accuracyBudget and --best"),
                                     (["--accuracyBudget", "cosine=0.99", "--calib", calib], "nothing is reduced"),
                                     (["--best", "--calib", calib, "--accuracyBudget", "cosine=2"], "must lie in [-1, 1]"),
                                     (["--best", "--calib", calib, "--accuracyBudget", "psnr=30"], "'psnr' is not cosine, rtol or top1")] {
            let r = try TestSupport.run(["build", cnn, "-o", folder + "/x.anvil"] + arguments)
            XCTAssertNotEqual(r.status, 0, "\(arguments)")
            XCTAssertTrue(r.stderr.contains(message), "\(arguments): \(r.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/x.anvil"))
        }
    }
}
