from setuptools import find_packages, setup


def version():
    scope = {}
    with open('lasnet_mmdet/version.py') as f:
        exec(f.read(), scope)
    return scope['__version__']


def requirements(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


setup(
    name='lasnet_mmdet',
    version=version(),
    description='LASNet (latency-aware spatial-wise dynamic networks) for MMDetection 3.x',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'tests.*')),
    include_package_data=True,
    package_data={'lasnet_mmdet.latency': ['profiles/*.json']},
    python_requires='>=3.9',
    install_requires=requirements('requirements/runtime.txt'),
    extras_require={
        'mim': requirements('requirements/mminstall.txt'),
        'tests': requirements('requirements/tests.txt'),
        'triton': ['triton'],
    },
    license='Apache License 2.0',
    zip_safe=False)
