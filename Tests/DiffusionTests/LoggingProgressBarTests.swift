import Diffusion
import XCTest

/// Captures what a ``ProgressBar`` writes, as a terminal or a CI log.
private final class RecordingOutput: ProgressOutput {
    let isTerminal: Bool
    let columns: Int
    var writes: [String] = []

    init(isTerminal: Bool, columns: Int = 80) {
        self.isTerminal = isTerminal
        self.columns = columns
    }

    func write(_ text: String) { writes.append(text) }
}

/// A clock the test moves by hand.
private final class ManualClock {
    var now = 1000.0
}

final class LoggingProgressBarTests: XCTestCase {
    func testDurationFormatting() {
        XCTAssertEqual(ProgressBar.formatDuration(0), "0:00:00")
        XCTAssertEqual(ProgressBar.formatDuration(59.4), "0:00:59")
        XCTAssertEqual(ProgressBar.formatDuration(59.6), "0:01:00")
        XCTAssertEqual(ProgressBar.formatDuration(3661), "1:01:01")
        XCTAssertEqual(ProgressBar.formatDuration(100_000), "27:46:40")
        XCTAssertEqual(ProgressBar.formatDuration(.nan), "-:--:--")
        XCTAssertEqual(ProgressBar.formatDuration(.infinity), "-:--:--")
        XCTAssertEqual(ProgressBar.formatDuration(-1), "-:--:--")
    }

    func testRateFormatting() {
        XCTAssertEqual(ProgressBar.formatRate(12.4), "12.40 it/s")
        XCTAssertEqual(ProgressBar.formatRate(1), "1.00 it/s")
        XCTAssertEqual(ProgressBar.formatRate(0.4), "2.50 s/it")
        XCTAssertEqual(ProgressBar.formatRate(nil), "? it/s")
        XCTAssertEqual(ProgressBar.formatRate(0), "? it/s")
    }

    func testPlainLinesEveryIntervalWhenNotATerminal() {
        let output = RecordingOutput(isTerminal: false)
        let clock = ManualClock()
        let bar = ProgressBar(total: 100, label: "train", output: output, clock: { clock.now }, plainInterval: 10)
        for step in stride(from: 2, through: 100, by: 2) {
            clock.now += 1  // 2 it/s
            bar.update(step: step, fields: [("epoch", "\(1 + (step - 1) / 20)/5"), ("loss", "0.5000")])
        }
        clock.now += 5
        bar.finish()
        bar.update(step: 101)  // ignored after finish
        XCTAssertEqual(output.writes, [
            "train 2/100   2% | epoch 1/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:49\n",
            "train 22/100  22% | epoch 2/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:39\n",
            "train 42/100  42% | epoch 3/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:29\n",
            "train 62/100  62% | epoch 4/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:19\n",
            "train 82/100  82% | epoch 5/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:09\n",
            "train 100/100 100% | epoch 5/5 | loss 0.5000 | 2.00 it/s | ETA 0:00:00\n",
            "train 100/100 100% | epoch 5/5 | loss 0.5000 | 1.82 it/s | elapsed 0:00:55\n",
        ])
    }

    func testRateIsAnExponentialMovingAverage() throws {
        let clock = ManualClock()
        let bar = ProgressBar(total: 1000, output: RecordingOutput(isTerminal: false), clock: { clock.now }, smoothing: 0.3)
        XCTAssertNil(bar.rate)
        clock.now += 1
        bar.update(step: 2)
        XCTAssertEqual(try XCTUnwrap(bar.rate), 2, accuracy: 1e-12)
        clock.now += 1
        bar.update(step: 6)
        XCTAssertEqual(try XCTUnwrap(bar.rate), 0.3 * 4 + 0.7 * 2, accuracy: 1e-12)
        bar.update(step: 8)  // no time has passed: the rate waits for the next interval
        XCTAssertEqual(try XCTUnwrap(bar.rate), 2.6, accuracy: 1e-12)
        clock.now += 2
        bar.update(step: 10)  // 4 steps over 2 s since the last measurement
        XCTAssertEqual(try XCTUnwrap(bar.rate), 0.3 * 2 + 0.7 * 2.6, accuracy: 1e-12)
    }

    func testTerminalRedrawsOneLineInPlace() throws {
        let output = RecordingOutput(isTerminal: true, columns: 80)
        let clock = ManualClock()
        let bar = ProgressBar(total: 50, label: "train", output: output, clock: { clock.now }, redrawInterval: 0.1)
        clock.now += 0.5
        bar.update(step: 10, fields: [("loss", "0.1234")])
        clock.now += 0.0625
        bar.update(step: 11)  // within the redraw interval: not drawn, but counted in the rate
        clock.now += 0.0625
        bar.update(step: 12, fields: [("loss", "0.1200")])
        clock.now += 0.015625
        bar.update(step: 50, fields: [("loss", "0.1000")])  // the last step is always drawn
        clock.now += 0.359375
        bar.finish()
        XCTAssertEqual(output.writes.count, 5)
        guard output.writes.count == 5 else { return }
        XCTAssertEqual(output.writes[0],
                       "\rtrain 10/50 [###................]  20% | loss 0.1234 | 20.00 it/s | ETA 0:00:02\u{1B}[K")
        XCTAssertEqual(output.writes[1],
                       "\rtrain 12/50 [####...............]  24% | loss 0.1200 | 17.96 it/s | ETA 0:00:02\u{1B}[K")
        XCTAssertEqual(output.writes[2],
                       "\rtrain 50/50 [##################] 100% | loss 0.1000 | 742.17 it/s | ETA 0:00:00\u{1B}[K")
        XCTAssertEqual(output.writes[3],
                       "\rtrain 50/50 [###############] 100% | loss 0.1000 | 50.00 it/s | elapsed 0:00:01\u{1B}[K")
        XCTAssertEqual(output.writes[4], "\n")
        for write in output.writes.dropLast() {
            XCTAssertLessThanOrEqual(write.count - "\r".count - "\u{1B}[K".count, 79)
        }
    }

    func testNarrowTerminalDropsTheBarAndTruncates() {
        let output = RecordingOutput(isTerminal: true, columns: 40)
        let clock = ManualClock()
        let bar = ProgressBar(total: 1000, label: "sample", output: output, clock: { clock.now })
        clock.now += 4
        bar.update(step: 1, fields: [("step", "1/1000")])
        XCTAssertEqual(output.writes, ["\rsample 1/1000   0% | step 1/1000 | 4.00\u{1B}[K"])
    }
}
