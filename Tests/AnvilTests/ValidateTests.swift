import AnvilCore
import AnvilONNX
import Foundation
import XCTest

/// `anvil validate` as a Polygraphy-grade comparison (statistics, histogram, required
/// tolerances, cosine and top-k, per-output tolerances, error statistics, JSON, --mark-all)
/// and NumPy archives (.npz) wherever tensors are read (fixtures/npz, tools/make-npz-fixtures).
final class ValidateTests: XCTestCase {
    let cnn = TestSupport.fixture("cnn/model.onnx")
    let planted = TestSupport.fixture("npz/cnn_planted.onnx")
    func npz(_ name: String) -> String { TestSupport.fixture("npz/\(name).npz") }

    func json(_ arguments: [String]) throws -> (status: Int32, report: [String: Any]) {
        let r = try TestSupport.run(["validate"] + arguments + ["--json"])
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        return (r.status, try XCTUnwrap(object, r.stdout + r.stderr))
    }

    func firstOutput(_ report: [String: Any]) throws -> [String: Any] {
        let sets = try XCTUnwrap(report["dataSets"] as? [[String: Any]])
        return try XCTUnwrap((sets.first?["outputs"] as? [[String: Any]])?.first)
    }

    func testNumPyArchivesAreReadStoredDeflatedAndZip64() throws {
        let image = try TensorFiles.read(TestSupport.fixture("cnn/test_data_set_0/input_0.pb")).tensor
        let logits = try TensorFiles.read(TestSupport.fixture("cnn/test_data_set_0/output_0.pb")).tensor
        for name in ["cnn_stored", "cnn_deflated", "cnn_zip64"] {
            let all = try TensorFiles.readAll(npz(name))
            XCTAssertEqual(all.map(\.name), ["image", "logits"], name)
            XCTAssertEqual(all[0].tensor, image, name)
            XCTAssertEqual(all[1].tensor, logits, name)
            XCTAssertEqual(try TensorFiles.read(npz(name), member: "logits").tensor, logits)
            let r = try TestSupport.run(["validate", cnn, "--reference", npz(name)])
            XCTAssertEqual(r.status, 0, r.stdout + r.stderr)
        }
        // `run --input name=FILE.npz` takes the array of that name.
        let folder = try TestSupport.temporaryFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let run = try TestSupport.run(["run", cnn, "--input", "image=\(npz("cnn_deflated"))", "--output-dir", folder])
        XCTAssertEqual(run.status, 0, run.stderr)
        XCTAssertTrue(Comparison.compare(actual: try TensorFiles.read(folder + "/logits.pb").tensor, expected: logits, atol: 1e-5, rtol: 1e-3).passed)
        // Several arrays and none of the name asked for: refused with the names it holds.
        XCTAssertThrowsError(try TensorFiles.read(npz("cnn_stored"), member: "x")) { XCTAssertTrue("\($0)".contains("image, logits"), "\($0)") }
    }

    func testBadArchivesAreRefusedNamingTheFile() throws {
        let cases = [("truncated", "no zip end-of-directory record"), ("damaged", "damaged.npz[image]"),
                     ("positional", "'arr_0', which names neither an input"), ("extra", "'other', which names neither an input")]
        for (name, message) in cases {
            let r = try TestSupport.run(["validate", cnn, "--reference", npz(name)])
            XCTAssertNotEqual(r.status, 0, name)
            XCTAssertTrue(r.stderr.contains(message), "\(name): \(r.stderr)")
        }
        // Every prefix of a good archive: an error or the right tensors, never a crash.
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: npz("cnn_deflated"))))
        for cut in stride(from: 0, to: bytes.count, by: 97) {
            _ = try? NumPyArchive.decode(Array(bytes.prefix(cut)), file: "cut.npz")
        }
    }

    func testJSONReportCarriesPolygraphyStatistics() throws {
        let (status, report) = try json([cnn, "--reference", TestSupport.fixture("cnn")])
        XCTAssertEqual(status, 0)
        XCTAssertEqual(report["passed"] as? Bool, true)
        let out = try firstOutput(report)
        XCTAssertEqual(out["name"] as? String, "logits")
        XCTAssertEqual(out["shape"] as? [Int], [1, 10])
        for side in ["actual", "expected", "absoluteError", "relativeError"] {
            let s = try XCTUnwrap(out[side] as? [String: Any], side)
            for key in ["mean", "std", "min", "max", "median", "p90", "p95", "p99"] { XCTAssertNotNil(s[key] as? Double, "\(side).\(key)") }
            XCTAssertEqual((s["maxIndex"] as? [Int])?.count, 2, side)
        }
        let histogram = try XCTUnwrap(out["histogram"] as? [[String: Any]])
        XCTAssertEqual(histogram.count, 10)
        XCTAssertEqual(histogram.compactMap { $0["count"] as? Int }.reduce(0, +), 10)
        XCTAssertEqual(out["requiredAtol"] as? Double, out["maxAbsoluteError"] as? Double)
        XCTAssertGreaterThan(try XCTUnwrap(out["cosine"] as? Double), 0.99999)
        XCTAssertEqual(out["top1Agreement"] as? Double, 1)
        XCTAssertEqual(out["top5Overlap"] as? Double, 1)
    }

    func testPerOutputTolerancesAndErrorStatistics() throws {
        // The planted model's logits are off by up to about 0.043 everywhere.
        let base = [planted, "--reference", TestSupport.fixture("cnn")]
        let strict = try json(base)
        XCTAssertNotEqual(strict.status, 0)
        let out = try firstOutput(strict.report)
        let maxError = try XCTUnwrap(out["maxAbsoluteError"] as? Double)
        XCTAssertGreaterThan(maxError, 0.01)
        // The reported required tolerance is exactly what passes.
        XCTAssertEqual(try json(base + ["--atol", "logits:\(maxError * 1.001)"]).status, 0)
        XCTAssertNotEqual(try json(base + ["--atol", "logits:\(maxError * 0.999)"]).status, 0)
        // The max statistic passes on the max error, the mean one on the smaller mean error.
        XCTAssertEqual(try json(base + ["--check-error-stat", "max", "--atol", "\(maxError * 1.001)"]).status, 0)
        let mean = try json(base + ["--check-error-stat", "mean", "--atol", "\(maxError * 0.999)"])
        XCTAssertEqual(mean.status, 0)
        XCTAssertLessThan(try XCTUnwrap(try firstOutput(mean.report)["requiredAtol"] as? Double), maxError)
        for (arguments, message) in [(["--atol", "nothing:1"], "'nothing', which is not an output"), (["--check-error-stat", "mode"], "--check-error-stat 'mode'"),
                                     (["--atol", "-1"], "must be finite and non-negative"), (["--atol", "1", "--atol", "2"], "given twice")] {
            let r = try TestSupport.run(["validate"] + base + arguments)
            XCTAssertNotEqual(r.status, 0)
            XCTAssertTrue(r.stderr.contains(message), "\(arguments): \(r.stderr)")
        }
    }

    func testMarkAllNamesTheFirstDivergingLayer() throws {
        let (status, report) = try json([planted, "--reference", TestSupport.fixture("cnn"), "--against", cnn, "--mark-all"])
        XCTAssertNotEqual(status, 0)
        let sets = try XCTUnwrap(report["dataSets"] as? [[String: Any]])
        let divergence = try XCTUnwrap(sets.first?["firstDivergence"] as? [String: Any])
        // The stem and the pooling agree; the convolution with the scaled weights does not.
        XCTAssertEqual(divergence["layer"] as? String, "/block/block.0/Conv")
        XCTAssertTrue((divergence["fusedFrom"] as? [String])?.contains("/block/block.0/Conv") ?? false)
        XCTAssertGreaterThanOrEqual(divergence["compared"] as? Int ?? 0, 3)
        // The model against itself: every layer agrees (text form).
        let same = try TestSupport.run(["validate", cnn, "--reference", TestSupport.fixture("cnn"), "--mark-all"])
        XCTAssertEqual(same.status, 0, same.stdout)
        XCTAssertTrue(same.stdout.contains("every layer output agrees"), same.stdout)
        let reference = try TestSupport.run(["validate", cnn, "--reference", TestSupport.fixture("cnn"), "--mark-all", "--reference-executor"])
        XCTAssertNotEqual(reference.status, 0)
        XCTAssertTrue(reference.stderr.contains("--mark-all compares an engine's layers"), reference.stderr)
    }
}
